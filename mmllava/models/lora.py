"""LoRA / QLoRA on transformers modules: PEFT target discovery, wrapping, and k-bit preparation.

Shared by every model of the package (LLaVA, InternVL): one place decides what "every Linear"
means, how a bitsandbytes LLM is prepared for training and how gradient checkpointing is turned on.
"""
from __future__ import annotations

import warnings
from typing import Any

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
    from peft import get_peft_model

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
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(llm, use_gradient_checkpointing=use_activation_checkpointing,
                                               gradient_checkpointing_kwargs=GRADIENT_CHECKPOINTING_KWARGS)
    if use_activation_checkpointing:
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=GRADIENT_CHECKPOINTING_KWARGS)
    return llm
