"""Writing files so that a crash leaves the old or the new version, never a torn one.

``commit`` makes a fully written temporary file or folder durable (fsync) and renames it into
place; ``write_text_atomic`` replaces a small text file; ``remove_path`` deletes a file or a
folder. ``mmllava.engine.checkpoint_hook.CheckpointHook`` builds crash-safe saving from them.
"""
from __future__ import annotations

import os
import os.path as osp
import shutil


def _fsync(path: str) -> None:
    """fsync a file, or every file in a folder tree and the folders themselves."""
    if osp.isdir(path):
        for root, _dirs, files in os.walk(path):
            for name in files:
                _fsync(osp.join(root, name))
            _fsync_dir(root)
    else:
        with open(path, 'rb') as f:
            os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_path(path: str) -> None:
    """Delete a checkpoint file or DeepSpeed checkpoint folder, if present."""
    if osp.isdir(path) and not osp.islink(path):
        shutil.rmtree(path)
    elif osp.lexists(path):
        os.remove(path)


def commit(tmp_path: str, final_path: str) -> None:
    """Make a fully written ``tmp_path`` durable and rename it to ``final_path`` (same folder)."""
    _fsync(tmp_path)
    if osp.isdir(final_path):  # os.replace cannot replace a non-empty folder (a re-saved DeepSpeed step)
        stale = final_path + '.old'
        remove_path(stale)
        os.replace(final_path, stale)
        os.replace(tmp_path, final_path)
        remove_path(stale)
    else:
        os.replace(tmp_path, final_path)
    _fsync_dir(osp.dirname(osp.abspath(final_path)))


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a torn file."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(osp.dirname(osp.abspath(path)))
