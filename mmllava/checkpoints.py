"""Checkpoints: which file a path names, reading it safely, and checking that it fits a model.

Every entry point that takes a training checkpoint (``pretrained_pth``, ``load_from``,
``train --resume PATH``, ``convert pth_to_hf``, ``eval --checkpoint``) goes through
``resolve_checkpoint`` and so accepts the same inputs:

- a ``.pth`` file (``torch.save`` output; ``.safetensors`` too where only weights are read);
- a DeepSpeed ``iter_N.pth/`` folder (mmengine's layout: ``iter_N.pth/mp_rank_00_model_states.pt``),
  or one holding a ``checkpoint/`` subfolder (``iter_N.pth/checkpoint/mp_rank_00_model_states.pt``),
  or that ``checkpoint/`` subfolder itself;
- a work dir: the checkpoint its ``last_checkpoint`` file names.

Anything else (a missing path, one file inside a DeepSpeed folder, a folder that is none of
these) is a one-line ``MMLLaVAError``.

Reading never unpickles arbitrary objects: ``torch.load(weights_only=True)`` with an allow-list
of exactly the non-tensor objects mmengine and DeepSpeed checkpoints hold (numpy arrays and
scalars in the message hub, DeepSpeed's loss scaler and ZeRO enums). mmengine pickles
``HistoryBuffer`` objects whose state names bound methods through ``getattr``; those two names are
mapped to inert stand-ins and the buffers are rebuilt from their plain state, so no attribute
lookup or constructor of the file's choosing ever runs. Anything else raises ``MMLLaVAError``
naming the refused globals.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from safetensors.torch import load_file as load_safetensors
from torch import nn

from mmllava.errors import MMLLaVAError, PathNotFoundError
from mmllava.formats.llava_projector import read_hf_llava_projector
from mmllava.formats.strict import check_trained_parts, shapes

DEEPSPEED_MODEL_FILE = 'mp_rank_00_model_states.pt'
# mmengine's work-dir pointer to the newest checkpoint (written by ``engine.checkpoint_hook``).
LAST_CHECKPOINT = 'last_checkpoint'
# A DeepSpeed folder may nest its files one level down, in ``checkpoint/``.
DEEPSPEED_SUBFOLDER = 'checkpoint'
# Where ``load_checkpoint_file`` notes the file it read, so the weight check can name it.
SOURCE_KEY = 'mmllava_source'
_DEEPSPEED_INNER_FILE = re.compile(r'.*mp_rank_\d+_(model|optim)_states\.pt')
# What mmengine's loaders strip from a wrapped model's keys.
MODULE_PREFIX = ((r'^module\.', ''),)


# --- which file a path names ------------------------------------------------------------------
def _prefix(setting: str | None) -> str:
    return f'{setting}: ' if setting else ''


def _work_dir_target(work_dir: Path, setting: str | None) -> Path:
    """The checkpoint ``work_dir/last_checkpoint`` names. mmengine writes the path as the run saw
    it (often relative to the folder training started in), so a path that does not exist as
    written is looked for by name beside the pointer: a work dir that was moved still resolves."""
    written = Path((work_dir / LAST_CHECKPOINT).read_text(encoding='utf-8').strip())
    for candidate in (written, work_dir / written.name):
        if written.name and candidate.exists():
            return candidate
    raise MMLLaVAError(f'{_prefix(setting)}{work_dir / LAST_CHECKPOINT} names {written}, which does not exist '
                       f'(nor does {work_dir / written.name})')


def resolve_checkpoint(path: str | os.PathLike, setting: str | None = None) -> Path:
    """The checkpoint ``path`` names (see the module doc): a file, or the DeepSpeed folder that
    holds ``mp_rank_00_model_states.pt`` directly. ``setting`` (e.g. ``'resume'``) starts errors."""
    path = Path(path).expanduser()
    if not path.exists():
        raise PathNotFoundError(f'{_prefix(setting)}checkpoint not found: {path}', setting=setting, value=str(path))
    if path.is_file():
        if _DEEPSPEED_INNER_FILE.fullmatch(path.name):
            folder = path.parent.parent if path.parent.name == DEEPSPEED_SUBFOLDER else path.parent
            raise MMLLaVAError(f'{_prefix(setting)}{path} is one file of a DeepSpeed checkpoint; pass the checkpoint '
                               f'folder that holds it instead: {folder}')
        return path
    for folder in (path, path / DEEPSPEED_SUBFOLDER):
        if (folder / DEEPSPEED_MODEL_FILE).is_file():
            return folder
    if (path / LAST_CHECKPOINT).is_file():
        return resolve_checkpoint(_work_dir_target(path, setting), setting)
    raise MMLLaVAError(f'{_prefix(setting)}{path}: a folder, but not a checkpoint: no {DEEPSPEED_MODEL_FILE} '
                       f'(a DeepSpeed iter_N.pth folder) and no {LAST_CHECKPOINT} (a work dir that saved one)')


# --- reading safely ---------------------------------------------------------------------------
class _HistoryBufferState:
    """Inert stand-in for ``mmengine.logging.HistoryBuffer`` while unpickling (state only)."""


def _unresolved_attribute(owner, name):
    """Stand-in for ``getattr`` while unpickling: records the name, looks nothing up."""
    return f'{getattr(owner, "__name__", type(owner).__name__)}.{name}'


def _allowed_globals() -> list:
    multiarray = np._core.multiarray if hasattr(np, '_core') else np.core.multiarray
    allowed = [(_HistoryBufferState, 'mmengine.logging.history_buffer.HistoryBuffer'),
               (_unresolved_attribute, 'builtins.getattr'), np.ndarray, np.dtype]
    allowed += [getattr(np.dtypes, name) for name in ('Float64DType', 'Float32DType', 'Int64DType', 'Int32DType',
                                                      'BoolDType', 'UInt32DType') if hasattr(np, 'dtypes')]
    for module in ('numpy._core.multiarray', 'numpy.core.multiarray'):  # numpy 2 and numpy 1 pickles
        allowed += [(multiarray._reconstruct, f'{module}._reconstruct'), (multiarray.scalar, f'{module}.scalar')]
    if 'deepspeed' in sys.modules:
        # Only DeepSpeed's own ZeRO optimizer files hold these, and only a DeepSpeed run reads
        # them: importing DeepSpeed costs seconds, so a process that has not is not made to.
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed += [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
    return allowed


def _restore_history_buffers(obj):
    """Replace unpickled ``_HistoryBufferState`` stand-ins by real ``HistoryBuffer`` objects."""
    if isinstance(obj, _HistoryBufferState):
        # Only training checkpoints hold these; converters and chat read weights without mmengine.

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
    """``torch.load`` one file with ``weights_only=True`` and mmllava's allow-list (see module doc).

    Raises ``MMLLaVAError`` naming the refused globals when the file pickles anything else.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise PathNotFoundError(f'checkpoint not found: {path}', value=str(path)) from None
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
    """A training checkpoint as mmengine's loaders expect it (``load_from``, resume): the dict of a
    ``.pth`` file, or a DeepSpeed folder's model-states file with ``module`` renamed ``state_dict``
    (so a plain runner can ``load_from`` a checkpoint written under ``--deepspeed``).
    ``filename`` is any input ``resolve_checkpoint`` takes."""
    path = resolve_checkpoint(filename)
    if path.is_dir():
        checkpoint = safe_torch_load(path / DEEPSPEED_MODEL_FILE, map_location=map_location)
        checkpoint['state_dict'] = checkpoint.pop('module')
    else:
        checkpoint = safe_torch_load(path, map_location=map_location)
    if isinstance(checkpoint, dict):
        checkpoint[SOURCE_KEY] = str(path)
    return checkpoint


def _is_hf_llava_folder(folder: Path) -> bool:
    """A transformers Llava folder (``mmllava build`` output or a huggingface export)."""
    config = folder / 'config.json'
    return config.is_file() and json.loads(config.read_text(encoding='utf-8')).get('model_type') == 'llava'


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """The tensors of a checkpoint (``pretrained_pth``, ``convert``, ``eval --checkpoint``): the
    ``state_dict``/``module`` of a training checkpoint, a ``.safetensors`` file, or the file itself.

    ``path`` is any input ``resolve_checkpoint`` takes, or a transformers Llava folder (its
    projector: ``mmllava build`` output is a starting point for a fine-tune).
    """
    path = Path(path).expanduser()
    if path.is_dir() and _is_hf_llava_folder(path):
        return read_hf_llava_projector(path)
    path = resolve_checkpoint(path)
    if path.is_dir():
        path = path / DEEPSPEED_MODEL_FILE
    if path.suffix == '.safetensors':
        return load_safetensors(str(path))
    obj = safe_torch_load(path)
    for key in ('state_dict', 'module', 'model'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MMLLaVAError(f'{path}: not a state dict of tensors')
    return dict(obj)


# --- checking that it fits a model ------------------------------------------------------------
def check_checkpoint_fits(model, state_dict: dict, source, revise_keys=MODULE_PREFIX) -> None:
    """Raise the one-line ``load_from: SOURCE: ...`` error unless ``state_dict`` (an ``iter_N.pth``'s
    weights) fits ``model``'s parts (see ``load_checkpoint_to_model``)."""
    revised = {}
    for key, value in state_dict.items():
        for pattern, replacement in revise_keys:
            key = re.sub(pattern, replacement, key)
        revised[key] = value
    check_trained_parts('load_from', source, shapes(nn.Module.state_dict(model)), shapes(revised))


def load_checkpoint_to_model(model, checkpoint: dict, strict: bool = False, revise_keys=MODULE_PREFIX):
    """mmengine's ``_load_checkpoint_to_model`` (``load_from`` and resume, plain and DeepSpeed
    runners) after checking the weights against one of our multimodal models: each part the
    checkpoint holds (projector, LoRA adapters, an unfrozen tower) complete, known and of the right
    shapes (``mmllava.formats.strict.check_trained_parts``). mmengine itself loads non-strictly and
    only logs what did not fit, which would train on from a partly initialised model."""
    # Imported here, not at the top: the models read ``pretrained_pth`` through this module (a
    # cycle), and converters and chat read checkpoints without importing mmengine's runner.

    # Imported here, not at the top: the models read ``pretrained_pth`` through this module (a
    # cycle), and converters and chat read checkpoints without mmengine's runner.
    from mmengine.runner.checkpoint import _load_checkpoint_to_model

    from mmllava.models.base import MultimodalModel

    source = checkpoint.pop(SOURCE_KEY, None) if isinstance(checkpoint, dict) else None
    if isinstance(model, MultimodalModel):
        check_checkpoint_fits(model, checkpoint.get('state_dict', checkpoint), source or 'the checkpoint',
                              revise_keys)
    return _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=list(revise_keys))
