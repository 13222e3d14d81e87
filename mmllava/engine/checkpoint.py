"""Checkpoint files: loaded without unrestricted unpickling, written atomically (light imports:
converters and chat load checkpoints through here).

Loading: ``torch.load(weights_only=True)`` with an allow-list of exactly the non-tensor objects
mmengine and DeepSpeed checkpoints hold (numpy arrays and scalars in the message hub, DeepSpeed's
loss scaler and ZeRO enums). mmengine pickles ``HistoryBuffer`` objects whose state names
bound methods through ``getattr``; those two names are mapped to inert stand-ins and the buffers
are rebuilt from their plain state, so no attribute lookup or constructor of the file's choosing
ever runs. Anything else raises ``MMLLaVAError`` naming the refused globals.

Writing: ``commit`` makes a fully written temporary file or folder durable and renames it into
place; ``write_text_atomic`` replaces a small text file. ``checkpoint_hook.CheckpointHook``
builds crash-safe saving from them.
"""
from __future__ import annotations

import os
import os.path as osp
import pickle
import shutil
import sys
from pathlib import Path

import torch

from mmllava.errors import MMLLaVAError, PathNotFoundError

DEEPSPEED_MODEL_FILE = 'mp_rank_00_model_states.pt'
LAST_CHECKPOINT = 'last_checkpoint'
# Where ``load_checkpoint_file`` notes the file it read, so the weight check can name it.
SOURCE_KEY = 'mmllava_source'


class _HistoryBufferState:
    """Inert stand-in for ``mmengine.logging.HistoryBuffer`` while unpickling (state only)."""


def _unresolved_attribute(owner, name):
    """Stand-in for ``getattr`` while unpickling: records the name, looks nothing up."""
    return f'{getattr(owner, "__name__", type(owner).__name__)}.{name}'


def _allowed_globals() -> list:
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    allowed = [(_HistoryBufferState, 'mmengine.logging.history_buffer.HistoryBuffer'),
               (_unresolved_attribute, 'builtins.getattr'), np.ndarray, np.dtype]
    allowed += [getattr(np.dtypes, name) for name in ('Float64DType', 'Float32DType', 'Int64DType', 'Int32DType',
                                                      'BoolDType', 'UInt32DType') if hasattr(np, 'dtypes')]
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):  # numpy 2 and numpy 1 pickles
        allowed += [(multiarray._reconstruct, f'{module}._reconstruct'), (multiarray.scalar, f'{module}.scalar')]
    if 'deepspeed' in sys.modules:  # DeepSpeed reading its ZeRO optimizer files (importing it costs seconds)
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed += [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    return allowed


def _restore_history_buffers(obj):
    """Replace unpickled ``_HistoryBufferState`` stand-ins by real ``HistoryBuffer`` objects."""
    if isinstance(obj, _HistoryBufferState):
        from mmengine.logging import HistoryBuffer

        state = vars(obj)
        return HistoryBuffer(list(state.get('_log_history', [])), list(state.get('_count_history', [])),
                             int(state.get('max_length', 1000000)))
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _restore_history_buffers(value)
    elif isinstance(obj, list):
        obj[:] = [_restore_history_buffers(value) for value in obj]
    return obj


def _refused_globals(path: Path) -> list[str]:
    allowed = {entry[1] if isinstance(entry, tuple) else f'{entry.__module__}.{entry.__qualname__}'
               for entry in _allowed_globals()}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint
        return []
    return [name for name in found if name not in allowed]


def safe_torch_load(path: str | os.PathLike, map_location='cpu'):
    """``torch.load`` a file with ``weights_only=True`` and mmllava's allow-list (see module doc).

    Raises ``MMLLaVAError`` naming the refused globals when the file pickles anything else.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise PathNotFoundError(f'{path}: checkpoint not found', value=path) from None
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        # Told apart by what the file pickles (torch lists it), not by the wording of torch's error.
        refused = ', '.join(_refused_globals(path))
        if not refused:
            first_line = (str(e).splitlines() or [type(e).__name__])[0]
            raise MMLLaVAError(f'{path}: not a readable checkpoint (truncated or corrupt?): {first_line}') from None
        raise MMLLaVAError(
            f'{path}: refusing to load: it pickles Python objects outside the allow-list ({refused}); '
            'mmllava only unpickles tensors, plain data and the state its own checkpoints hold. If you '
            'trust the file, re-save its tensors with torch.save(...) and load that.') from None
    return _restore_history_buffers(obj)


def load_checkpoint_file(filename: str | os.PathLike, map_location=None) -> dict:
    """mmengine's loader for local paths: a ``.pth`` file or a DeepSpeed ``iter_N.pth/`` folder.

    A DeepSpeed folder yields its model-states file with ``module`` renamed ``state_dict``, so a
    plain runner can ``load_from`` a checkpoint written under ``--deepspeed``.
    """
    path = Path(filename)
    if path.is_dir():
        model_file = path / DEEPSPEED_MODEL_FILE
        if not model_file.is_file():
            raise MMLLaVAError(f'{path}: a folder, but not a DeepSpeed checkpoint (no {DEEPSPEED_MODEL_FILE})')
        checkpoint = safe_torch_load(model_file, map_location=map_location)
        checkpoint['state_dict'] = checkpoint.pop('module')
        checkpoint[SOURCE_KEY] = str(path)
        return checkpoint
    if not path.is_file():
        raise PathNotFoundError(f'{path}: checkpoint not found', value=filename)
    checkpoint = safe_torch_load(path, map_location=map_location)
    if isinstance(checkpoint, dict):
        checkpoint[SOURCE_KEY] = str(path)
    return checkpoint


def load_checkpoint_to_model(model, checkpoint: dict, strict: bool = False, revise_keys=((r'^module\.', ''),)):
    """mmengine's ``_load_checkpoint_to_model`` (``load_from`` and resume, plain and DeepSpeed
    runners) after checking the weights against one of our multimodal models: each part the
    checkpoint holds (projector, LoRA adapters, an unfrozen tower) complete, known and of the right
    shapes (``mmllava.formats.strict.check_trained_parts``). mmengine itself loads non-strictly and
    only logs what did not fit, which would train on from a partly initialised model."""
    from mmengine.runner.checkpoint import _load_checkpoint_to_model

    from mmllava.models.base import MultimodalModel

    source = checkpoint.pop(SOURCE_KEY, None) if isinstance(checkpoint, dict) else None
    if isinstance(model, MultimodalModel):
        check_checkpoint_fits(model, checkpoint.get('state_dict', checkpoint), source or 'the checkpoint',
                              revise_keys)
    return _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=list(revise_keys))


def check_checkpoint_fits(model, state_dict: dict, source, revise_keys=((r'^module\.', ''),)) -> None:
    """Raise the one-line ``load_from: SOURCE: ...`` error unless ``state_dict`` (an ``iter_N.pth``'s
    weights) fits ``model``'s parts (see ``load_checkpoint_to_model``)."""
    import re

    from torch import nn

    from mmllava.formats.strict import check_trained_parts, shapes

    revised = {}
    for key, value in state_dict.items():
        for pattern, replacement in revise_keys:
            key = re.sub(pattern, replacement, key)
        revised[key] = value
    check_trained_parts('load_from', source, shapes(nn.Module.state_dict(model)), shapes(revised))


# --- atomic writing ---------------------------------------------------------------------------
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
