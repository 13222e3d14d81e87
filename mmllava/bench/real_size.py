"""Random-initialised models at the seeds' real sizes, for GPU benchmarks (no download).

Each is the tiny zoo model of the same family (`mmllava.tiny.zoo`: same on-disk format, tokenizer
and special ids) with the shape of the real checkpoint's ``config.json``, weights drawn with the
zoo's rule and stored in bf16 safetensors shards, as the real folders are. The tiny tokenizer's
ids stay valid in the larger vocabulary. Speed and memory depend on the shapes, not the values, so
these give the real step time and peak memory of training the real checkpoints.
"""
from __future__ import annotations

import json
import math
import shutil
import zlib
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, CLIPConfig, CLIPModel

from mmllava.convert.shards import write_shards
from mmllava.tiny.zoo import internlm2_shapes, native_shapes, random_tensor

# name -> (tiny zoo model of the same family, the real config's shape fields)
REAL_SIZES = {
    'internlm2_chat_1_8b': ('internlm2_chat', dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=8, vocab_size=92544)),
    'llama3_8b_instruct': ('llama3_instruct', dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=128256)),
    'clip_vit_large_p14_336': ('clip_vit', dict(vision_config=dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14))),
}
SHARD_SIZE = '5GB'  # transformers' default


def real_size_config(name: str, tiny_config: dict, overrides: dict | None = None) -> dict:
    """The tiny model's ``config.json`` dict with the real shape of ``name`` (and ``overrides``,
    e.g. fewer layers for a quick check), in bf16."""
    _, shape = REAL_SIZES[name]
    config = json.loads(json.dumps(tiny_config))
    for fields in (shape, overrides or {}):
        for key, value in fields.items():
            if isinstance(value, dict):
                config[key].update(value)
            else:
                config[key] = value
    config['torch_dtype'] = 'bfloat16'
    return config


def parameter_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Names and shapes of every stored parameter for a ``config.json`` dict (InternLM2, a
    transformers causal LM or CLIP), computed without allocating them."""
    if config.get('model_type') == 'internlm2':
        return internlm2_shapes(config)
    if config.get('model_type') == 'clip':
        return {**native_shapes(CLIPConfig.from_dict(config), CLIPModel), 'logit_scale': ()}
    model_config = AutoConfig.for_model(**config)
    skip = ('lm_head.weight',) if config.get('tie_word_embeddings') else ()
    return native_shapes(model_config, AutoModelForCausalLM.from_config, skip)


def build_real_size(name: str, out_dir: str | Path, tiny_zoo: str | Path, seed: int = 0,
                    overrides: dict | None = None) -> Path:
    """Write ``out_dir/name`` from the tiny zoo folder ``tiny_zoo/<family>``; returns the folder.

    Memory stays near one shard (5 GB): tensors are drawn as their shard is written, in bf16
    (``mmllava.convert.shards.write_shards``).
    """
    tiny_name, _ = REAL_SIZES[name]
    source, folder = Path(tiny_zoo) / tiny_name, Path(out_dir) / name
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns('*.safetensors', '*.bin', '*.index.json'))
    config = real_size_config(name, json.loads((source / 'config.json').read_text()), overrides)
    (folder / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
    if name.startswith('clip'):
        _real_size_preprocessor(folder, config['vision_config']['image_size'])
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
    shapes = parameter_shapes(config)

    def tensor_for(key: str) -> torch.Tensor:  # drawn in key order: write_shards keeps it
        value = torch.tensor(2.6592) if key == 'logit_scale' else random_tensor(key, shapes[key], gen)
        return value.to(torch.bfloat16)

    write_shards({key: math.prod(shape) * 2 for key, shape in shapes.items()}, tensor_for, folder, SHARD_SIZE)
    return folder


def _real_size_preprocessor(folder: Path, image_size: int) -> None:
    path = folder / 'preprocessor_config.json'
    processor = json.loads(path.read_text())
    processor['crop_size'] = {'height': image_size, 'width': image_size}
    processor['size'] = {'shortest_edge': image_size}
    path.write_text(json.dumps(processor, indent=2) + '\n')
