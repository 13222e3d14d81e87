"""LoRA / QLoRA on transformers modules: PEFT target discovery, wrapping, and k-bit preparation.

Shared by every model of the package (LLaVA, InternVL): one place decides what "every Linear"
means, how a bitsandbytes LLM is prepared for training and how gradient checkpointing is turned on.
"""
from __future__ import annotations

import sys
import warnings
from typing import Any

from peft import get_peft_model, prepare_model_for_kbit_training
from torch import nn

from mmllava.config import build

# Non-reentrant checkpointing works when no input requires grad (frozen embeddings + LoRA).
GRADIENT_CHECKPOINTING_KWARGS = {'use_reentrant': False}


def find_linear_names(module: nn.Module, exclude: tuple[str, ...] = ('lm_head', 'output')) -> list[str]:
    """Names (last component) of every Linear layer, for PEFT ``target_modules``.

    bitsandbytes' ``Linear4bit``/``Linear8bitLt`` subclass ``nn.Linear``, so QLoRA is covered.
    """
    names = set()
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            leaf = name.rsplit('.', 1)[-1]
            if leaf not in exclude:
                names.add(leaf)
    return sorted(names)


def apply_lora(module: nn.Module, lora_cfg: Any, exclude: tuple[str, ...] = ('lm_head', 'output')):
    """Wrap ``module`` with PEFT LoRA; ``target_modules=None`` means every Linear layer."""
    lora_config = build(lora_cfg)
    if lora_config.target_modules is None:
        lora_config.target_modules = find_linear_names(module, exclude)
    with warnings.catch_warnings():
        # PEFT reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning per model).
        warnings.filterwarnings('ignore', message='`is_gradient_checkpointing` is deprecated', category=FutureWarning)
        return get_peft_model(module, lora_config)


def is_quantized(model: nn.Module) -> bool:
    """Whether the model was loaded with bitsandbytes (4- or 8-bit) quantisation."""
    return bool(getattr(model, 'is_loaded_in_4bit', False) or getattr(model, 'is_loaded_in_8bit', False))


def prepare_llm(llm: nn.Module, use_activation_checkpointing: bool) -> nn.Module:
    """A quantised LLM through PEFT's ``prepare_model_for_kbit_training`` (fp32 norms, input grads,
    checkpointing); a plain one gets gradient checkpointing when asked. Returns the LLM to keep."""
    if is_quantized(llm):
        return prepare_model_for_kbit_training(llm, use_gradient_checkpointing=use_activation_checkpointing,
                                               gradient_checkpointing_kwargs=GRADIENT_CHECKPOINTING_KWARGS)
    if use_activation_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=GRADIENT_CHECKPOINTING_KWARGS)
    return llm


def keep_4bit_training_layout(*modules: nn.Module) -> int:
    """Every bitsandbytes ``Linear4bit`` in ``modules`` computes through the trainable NF4 layout.

    bitsandbytes 0.50 (``Linear4bit.forward``) repacks a layer's NF4 weight in place into a CPU
    inference layout (``quant_state.packing_format_for_cpu``: bf16 absmax, tiled nibbles) the first
    time it runs on a CPU with AVX512-BF16 in eval mode without grad (``support_avx512bf16_for_cpu
    and not self.training and not x.requires_grad``) -- our chat evaluation before training does
    exactly that. Nothing packs it back, and ``matmul_4bit`` then always takes ``gemv_4bit``, which
    has no autograd kernel: every later training step gets wrong gradients. The packed path is not
    exact either (its absmax is rounded to bf16), so the models of this package never take it:
    the per-layer flag the forward reads is switched off, and a weight that was packed anyway is
    unpacked with bitsandbytes' own inverse (exact for the nibbles; a double-quantised absmax is
    re-quantised from its bf16 copy). Returns the number of layers that had to be unpacked.
    """
    bnb = sys.modules.get('bitsandbytes')
    if bnb is None:  # no Linear4bit can exist before bitsandbytes is imported
        return 0
    unpacked = 0
    for module in modules:
        for layer in module.modules():
            if not isinstance(layer, bnb.nn.Linear4bit):
                continue
            layer.support_avx512bf16_for_cpu = False
            weight = layer.weight
            if getattr(getattr(weight, 'quant_state', None), 'packing_format_for_cpu', False):
                # only the bitsandbytes versions that pack have the inverse
                from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

                weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data,
                                                                                        weight.quant_state)
                unpacked += 1
    if unpacked:
        warnings.warn(f'{unpacked} bitsandbytes 4-bit weights were packed for CPU inference and are unpacked '
                      'for training (their double-quantised absmax re-quantised from its bf16 copy)', stacklevel=2)
    return unpacked
