"""bitsandbytes (QLoRA) weights -> plain ``nn.Linear`` layers, with exactly the values training used.

A 4-bit layer computes with ``dequantize_4bit(weight)`` (8-bit: the int8 rows times their scales);
those dequantised matrices are what an export must hold so its logits equal the training model's.
"""
from __future__ import annotations

import torch
from peft.utils.integrations import dequantize_bnb_weight
from torch import nn


def is_bnb_linear(module: nn.Module) -> bool:
    """A bitsandbytes ``Linear4bit`` or ``Linear8bitLt`` layer (not a PEFT wrapper around one)."""
    try:
        import bitsandbytes as bnb
    except ImportError:  # no bitsandbytes: nothing can be quantised
        return False
    return isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))


def dequantized_weight(layer: nn.Module) -> torch.Tensor:
    """The float32 weight a bitsandbytes layer computes with (a plain layer's weight as float32)."""
    if not is_bnb_linear(layer):
        return layer.weight.detach().float()

    return dequantize_bnb_weight(layer.weight, state=getattr(layer, 'state', None)).float()


def plain_linear(template: nn.Module, weight: torch.Tensor, dtype: torch.dtype) -> nn.Linear:
    """An ``nn.Linear`` holding ``weight`` (and ``template``'s bias) in ``dtype``."""
    bias = getattr(template, 'bias', None)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device='meta')
    linear.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False)
    return linear


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Set the submodule called ``name`` (dotted) of ``root`` to ``new``."""
    parent_name, _, child = name.rpartition('.')
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def dequantize_model(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Replace every bitsandbytes layer of ``model`` by a plain ``Linear`` in ``dtype``, one at a time
    (the 4-bit copy of each layer is freed as it goes), and clear the quantisation flags."""
    for name, module in list(model.named_modules()):
        if is_bnb_linear(module):
            replace_module(model, name, plain_linear(module, dequantized_weight(module), dtype))
    clear_quantization_flags(model)
    return model


def clear_quantization_flags(model: nn.Module) -> None:
    """Mark a dequantised model as a plain one (``save``/``merge`` code paths check these)."""
    for sub in model.modules():
        for flag in ('is_loaded_in_4bit', 'is_loaded_in_8bit', 'is_quantized'):
            if getattr(sub, flag, False):
                setattr(sub, flag, False)
        if getattr(sub, 'hf_quantizer', None) is not None:
            sub.hf_quantizer = None
        config = getattr(sub, 'config', None)
        if config is not None and hasattr(config, 'quantization_config'):
            del config.quantization_config
