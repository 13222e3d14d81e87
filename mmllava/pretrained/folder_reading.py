"""Reading local model folders for the loaders: existence, JSON files, checkpoint shards, dtype argument.

Every failure is an :class:`MMLLaVAError` whose one line names the config variable and the path."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import safe_open

from mmllava.errors import MMLLaVAError


def read_json(path: Path, what: str) -> dict:
    """A JSON file of a model folder, or an ``MMLLaVAError`` naming it."""
    if not path.is_file():
        raise MMLLaVAError(f'{what}: {path.parent} has no {path.name}')
    try:
        return json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise MMLLaVAError(f'{what}: cannot read {path}: {e}') from None


def dtype_kwargs(torch_dtype) -> dict:
    """``from_pretrained`` keyword for a dtype given as ``None``, ``'auto'``, a name or a ``torch.dtype``."""
    if torch_dtype is None:
        return {}
    if isinstance(torch_dtype, str) and torch_dtype != 'auto':
        dtype = getattr(torch, torch_dtype.removeprefix('torch.'), None)
        if not isinstance(dtype, torch.dtype):
            raise MMLLaVAError(f'torch_dtype: unknown dtype {torch_dtype!r}')
        torch_dtype = dtype
    return {'dtype': torch_dtype}


def attention_kwargs(attn_implementation, dtype_kwarg: dict) -> dict:
    """``from_pretrained`` keyword for the attention kernel: ``attn_implementation`` when given;
    else flash-attention-2 where it can run (a CUDA device, the ``flash_attn`` package, fp16/bf16
    weights), which also gives packed rows (``pack_to_max_length``) its varlen kernels that skip
    the other samples; else nothing, so transformers picks SDPA."""
    if attn_implementation is not None:
        return {'attn_implementation': attn_implementation}
    if (torch.cuda.is_available() and importlib.util.find_spec('flash_attn') is not None
            and dtype_kwarg.get('dtype') in (torch.float16, torch.bfloat16)):
        return {'attn_implementation': 'flash_attention_2'}
    return {}


def weight_files(folder: Path, what: str) -> list[Path]:
    """The checkpoint files of a folder: one file or the shards its index names, safetensors first."""
    for single, index in (('model.safetensors', 'model.safetensors.index.json'),
                          ('pytorch_model.bin', 'pytorch_model.bin.index.json')):
        if (folder / index).is_file():
            shards = sorted(set(read_json(folder / index, what)['weight_map'].values()))
            absent = [shard for shard in shards if not (folder / shard).is_file()]
            if absent:
                raise MMLLaVAError(f'{what}: {folder}: {len(absent)} of {len(shards)} checkpoint shards named by '
                                   f'{index} missing ({", ".join(absent[:3])})')
            return [folder / shard for shard in shards]
        if (folder / single).is_file():
            return [folder / single]
    raise MMLLaVAError(f'{what}: {folder} has no model weights (model.safetensors or pytorch_model.bin)')


def iter_weight_shards(folder: Path, what: str, keep: Callable[[str], bool] = lambda key: True) -> Iterator[dict]:
    """The folder's tensors one shard at a time (only keys ``keep`` accepts), so callers can convert
    shard by shard without holding two copies of a model."""
    for path in weight_files(folder, what):
        if path.suffix == '.safetensors':
            with safe_open(str(path), framework='pt') as f:
                yield {key: f.get_tensor(key) for key in f.keys() if keep(key)}
        else:
            # weights_only: a checkpoint must never run code; mmap keeps the file's pages out of our heap.
            shard = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
            yield {key: tensor for key, tensor in shard.items() if keep(key)}


def weight_shapes(folder: Path, what: str) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of every tensor in the folder's checkpoint files, read from the safetensors
    headers without loading the data (``.bin`` files are memory-mapped)."""
    out = {}
    for path in weight_files(folder, what):
        if path.suffix == '.safetensors':
            with safe_open(str(path), framework='pt') as f:
                out.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
        else:
            shard = torch.load(path, map_location='cpu', weights_only=True, mmap=True)
            out.update({key: tuple(tensor.shape) for key, tensor in shard.items()})
    return out
