"""Writing weights as safetensors shards (``model-0000i-of-0000n.safetensors`` + index), the layout
``from_pretrained`` of every transformers version, vLLM and LMDeploy read."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from mmllava.errors import MMLLaVAError

_UNITS = {'': 1, 'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'TB': 10**12,
          'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30, 'TIB': 2**40}


def parse_size(size: str | int) -> int:
    """``'2GB'`` / ``'500MB'`` / ``'5GiB'`` / ``1000`` -> bytes (decimal units as transformers)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*', str(size).upper())
    if not m or m.group(2) not in _UNITS or float(m.group(1)) <= 0:
        raise MMLLaVAError(f'--max-shard-size: cannot read {size!r}; use e.g. 2GB, 500MB or 5GiB')
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def save_safetensors(state_dict: dict[str, torch.Tensor], save_dir: str | Path, dtype: torch.dtype,
                     max_shard_size: str | int = '2GB', prefix: str = 'model') -> list[Path]:
    """Write ``state_dict`` cast to ``dtype`` (floating tensors only) in shards of at most
    ``max_shard_size`` bytes (a bigger single tensor gets a shard of its own).

    Tensors are cast and copied one shard at a time, so the extra memory is one shard, never a
    second copy of the model; copying also separates tensors that share storage (tied weights).
    """
    def out_dtype(t: torch.Tensor) -> torch.dtype:
        return dtype if t.is_floating_point() else t.dtype

    sizes = {key: tensor.numel() * torch.empty((), dtype=out_dtype(tensor)).element_size()
             for key, tensor in state_dict.items()}
    return write_shards(
        sizes, lambda key: state_dict[key].detach().to(device='cpu', dtype=out_dtype(state_dict[key]), copy=True),
        save_dir, max_shard_size, prefix)


def write_shards(sizes: dict[str, int], tensor_for: Callable[[str], torch.Tensor], save_dir: str | Path,
                 max_shard_size: str | int = '2GB', prefix: str = 'model') -> list[Path]:
    """Write the tensors ``tensor_for(key)`` in the order of ``sizes`` (bytes per key) as shards of at
    most ``max_shard_size`` (``prefix.safetensors``, or ``prefix-0000i-of-0000n.safetensors`` and
    an index). Each tensor is made when its shard is written, so memory holds one shard at a time."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    limit = parse_size(max_shard_size)
    groups: list[list[str]] = [[]]
    size = 0
    for key, nbytes in sizes.items():
        if groups[-1] and size + nbytes > limit:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    total = len(groups)
    names = [f'{prefix}.safetensors'] if total == 1 else [
        f'{prefix}-{i + 1:05d}-of-{total:05d}.safetensors' for i in range(total)]
    weight_map, total_size = {}, 0
    for name, keys in zip(names, groups):
        shard = {key: tensor_for(key).contiguous() for key in keys}
        save_file(shard, str(save_dir / name), metadata={'format': 'pt'})
        total_size += sum(t.numel() * t.element_size() for t in shard.values())
        weight_map.update({k: name for k in keys})
        if total > 1:
            print(f'  wrote {name}', flush=True)
        del shard
    if total > 1:
        index = {'metadata': {'total_size': total_size}, 'weight_map': weight_map}
        (save_dir / f'{prefix}.safetensors.index.json').write_text(json.dumps(index, indent=2) + '\n')
    return [save_dir / n for n in names]
