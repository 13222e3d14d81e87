"""Reading weight files safely: safetensors, ``torch.save`` files (``weights_only``), DeepSpeed folders.

Never unpickles arbitrary objects: ``torch.load(weights_only=True)`` only.
"""
from __future__ import annotations

import os
from pathlib import Path

from mmllava.errors import MMLLaVAError, PathNotFoundError


def _deepspeed_model_file(folder: Path) -> Path | None:
    # mmengine/DeepSpeed save `iter_N.pth/` folders holding `checkpoint/mp_rank_00_model_states.pt`.
    for candidate in (folder / 'mp_rank_00_model_states.pt', folder / 'checkpoint' / 'mp_rank_00_model_states.pt'):
        if candidate.is_file():
            return candidate
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A work dir (holding mmengine's ``last_checkpoint`` pointer) means its latest checkpoint."""
    path = Path(path).expanduser()
    pointer = path / 'last_checkpoint'
    if path.is_dir() and pointer.is_file():
        target = Path(pointer.read_text().strip())
        return target if target.is_absolute() else path / target.name
    return path


def _is_hf_llava_folder(folder: Path) -> bool:
    """A transformers Llava folder (``mmllava build`` output or a huggingface export)."""
    import json

    config = folder / 'config.json'
    return config.is_file() and json.loads(config.read_text(encoding='utf-8')).get('model_type') == 'llava'


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """Tensors of a checkpoint: ``state_dict``/``module`` of a training checkpoint, or the file itself.

    ``path`` may be a weights file, a DeepSpeed checkpoint folder or a work dir (its last checkpoint).
    """
    import torch

    path = resolve_checkpoint(path)
    if path.is_dir() and _is_hf_llava_folder(path):
        from mmllava.formats.llava import read_hf_llava_projector

        return read_hf_llava_projector(path)
    if path.is_dir():
        model_file = _deepspeed_model_file(path)
        if model_file is None:
            raise MMLLaVAError(f'{path}: a folder, but not a DeepSpeed checkpoint (no mp_rank_00_model_states.pt)')
        path = model_file
    if not path.is_file():
        raise PathNotFoundError(f'{path}: checkpoint not found', value=path)
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file

        return load_file(str(path))
    from mmllava.engine.checkpoint import safe_torch_load

    obj = safe_torch_load(path)
    for key in ('state_dict', 'module', 'model'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MMLLaVAError(f'{path}: not a state dict of tensors')
    return dict(obj)
