"""Merging LoRA adapters into their base weights, also when the base is 4-/8-bit (QLoRA).

PEFT's own ``merge_and_unload`` re-quantises a merged bitsandbytes layer (losing the adapter's
precision), so LoRA layers on bitsandbytes bases are merged here in float32 from the dequantised
weight; every other layer goes through PEFT. ``merge_adapter`` is ``mmllava convert merge``.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn

from mmllava.convert.dequantize import (clear_quantization_flags, dequantize_model, dequantized_weight, is_bnb_linear,
                                        plain_linear, replace_module)
from mmllava.convert.llm_and_vision_folders import save_llm_folder, save_vision_folder
from mmllava.errors import MMLLaVAError
from mmllava.formats.strict import load_peft_adapter
from mmllava.pretrained import load_image_processor, load_llm, load_tokenizer, load_vision_encoder


def merge_lora(module: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """``module`` (a ``PeftModel`` or a plain, maybe quantised model) with LoRA merged and no
    bitsandbytes layers left; quantised bases become ``dtype`` (default float32)."""
    dtype = dtype or torch.float32
    if isinstance(module, PeftModel):
        for name, layer in list(module.named_modules()):
            if isinstance(layer, LoraLayer) and is_bnb_linear(layer.get_base_layer()):
                base = layer.get_base_layer()
                weight = dequantized_weight(base)
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        weight += layer.get_delta_weight(adapter).float()
                replace_module(module, name, plain_linear(base, weight, dtype))
        clear_quantization_flags(module)
        module = module.merge_and_unload()
    return dequantize_model(module, dtype)


def merge_adapter(base: str | os.PathLike, adapter: str | os.PathLike, save_dir: str | os.PathLike,
                  is_clip: bool = False, max_shard_size: str | int = '2GB', fp32: bool = False) -> Path:
    """Merge the PEFT ``adapter`` folder into ``base`` (an LLM folder, InternLM2 included, or a CLIP
    vision tower with ``is_clip``) and save a plain folder with its tokenizer or image processor.

    The dtype is the base's own (float32 with ``fp32``); weights are written in the legacy layout.
    """
    adapter = Path(adapter)
    if not (adapter / 'adapter_config.json').is_file():
        raise MMLLaVAError(f'{adapter}: not a PEFT adapter folder (no adapter_config.json)')
    save_dir = Path(save_dir)
    dtype_arg = torch.float32 if fp32 else 'auto'
    print(f'Loading base model {base}', flush=True)
    model = load_vision_encoder(base, torch_dtype=dtype_arg) if is_clip else load_llm(base, torch_dtype=dtype_arg)
    dtype = next(model.parameters()).dtype
    model = load_peft_adapter(model, adapter, 'adapter')
    print('Merging LoRA', flush=True)
    model = merge_lora(model, dtype)
    print(f'Saving to {save_dir}', flush=True)
    if is_clip:
        save_vision_folder(model, load_image_processor(base), save_dir, dtype, max_shard_size)
    else:
        save_llm_folder(model, load_tokenizer(base), save_dir, dtype, max_shard_size)
    print(f'All done: {save_dir}', flush=True)
    return save_dir
