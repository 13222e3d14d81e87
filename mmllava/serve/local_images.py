"""Reading an image file a request names inside ``--allow-local-images DIR``, safely:

- the path must stay inside DIR both as written (no ``..`` or absolute path leaving it) and once
  symlinks are resolved: a symlink inside DIR may point elsewhere inside DIR, never outside it;
- only a regular file is read: a FIFO, device, socket or folder is refused without blocking (it is
  opened with ``O_NONBLOCK`` and checked with ``fstat`` before any read);
- at most ``max_bytes`` are read.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from mmllava.data.image import resolve_image_path
from mmllava.errors import MMLLaVAError


class FileRefused(ValueError):
    """The file cannot be read for a request; ``status`` is 400 or 413."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def read_allowed_file(path: str, folder: Path, max_bytes: int) -> bytes:
    """The bytes of ``path`` (relative to ``folder``, or absolute inside it), or :class:`FileRefused`."""
    try:
        full = resolve_image_path(path, folder)
    except MMLLaVAError:
        raise FileRefused(f'{path!r} is outside the folder allowed by --allow-local-images') from None
    real_folder = os.path.realpath(folder)
    real = os.path.realpath(full)
    if os.path.commonpath([real_folder, real]) != real_folder:
        raise FileRefused(f'{path!r} is a symlink to a file outside the folder allowed by --allow-local-images')
    try:
        # O_NOFOLLOW: the resolved path has no symlink left; one swapped in since is refused (ELOOP).
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, 'O_CLOEXEC', 0))
    except FileNotFoundError:
        raise FileRefused(f'image file not found: {path!r}') from None
    except OSError as e:
        reason = 'a symlink appeared in its place' if e.errno == errno.ELOOP else e.strerror
        raise FileRefused(f'{path!r}: cannot open: {reason}') from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = ('a folder' if stat.S_ISDIR(info.st_mode) else 'a FIFO' if stat.S_ISFIFO(info.st_mode)
                    else 'a device' if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else 'a socket'
                    if stat.S_ISSOCK(info.st_mode) else 'not a file')
            raise FileRefused(f'{path!r} is {kind}, not a regular file')
        if info.st_size > max_bytes:
            raise FileRefused(f'{path!r} has {info.st_size} bytes, over the limit of {max_bytes} (--max-upload-mb)',
                              413)
        chunks, size = [], 0
        while True:  # read to the end, but never more than the limit (the file may grow meanwhile)
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise FileRefused(f'{path!r} is over the limit of {max_bytes} bytes (--max-upload-mb)', 413)
        return b''.join(chunks)
    except OSError as e:
        raise FileRefused(f'{path!r}: cannot read: {e.strerror}') from None
    finally:
        os.close(fd)
