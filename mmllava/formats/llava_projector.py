"""LLaVA projector checkpoints: ours <-> XTuner <-> original LLaVA <-> transformers' Llava.

Our projector keys are ``projector.{i}.{weight,bias}`` (an ``nn.Sequential``: Linear, GELU, Linear).
| source | keys |
| --- | --- |
| XTuner LLaVA `iter_N.pth` | ``projector.model.{i}.*`` |
| original LLaVA `mm_projector.bin` | ``model.mm_projector.{i}.*`` |
| transformers `LlavaForConditionalGeneration` | ``multi_modal_projector.linear_{1,2}.*`` (legacy) or ``model.multi_modal_projector...`` |
"""
from __future__ import annotations

import re
from pathlib import Path

from mmllava.formats.internlm2 import has_internlm2_names, internlm2_to_llama
from mmllava.pretrained.folder_reading import iter_weight_shards

_PROJECTOR_PATTERNS = (
    ('ours', re.compile(r'^projector\.(\d+)\.(weight|bias)$')),
    ('xtuner', re.compile(r'^projector\.model\.(\d+)\.(weight|bias)$')),
    ('llava', re.compile(r'^(?:model\.)?mm_projector\.(\d+)\.(weight|bias)$')),
)
_HF_PROJECTOR = re.compile(r'^(?:model\.)?multi_modal_projector\.linear_(\d+)\.(weight|bias)$')


def split_projector_state(state_dict: dict) -> tuple[dict, dict, str | None]:
    """Split ``state_dict`` into (projector weights in our keys, the remaining keys, source style).

    The style is ``'ours'``, ``'xtuner'``, ``'llava'``, ``'huggingface'`` or ``None`` when the
    checkpoint holds no projector.
    """
    projector, rest, style = {}, {}, None
    for key, value in state_dict.items():
        for name, pattern in _PROJECTOR_PATTERNS:
            m = pattern.match(key)
            if m:
                projector[f'projector.{m.group(1)}.{m.group(2)}'] = value
                style = name
                break
        else:
            m = _HF_PROJECTOR.match(key)
            if m:
                # linear_1 -> 0, linear_2 -> 2 (the GELU sits at index 1).
                projector[f'projector.{2 * (int(m.group(1)) - 1)}.{m.group(2)}'] = value
                style = 'huggingface'
            else:
                rest[key] = value
    return projector, rest, style


def projector_to_hf(projector_state: dict, prefix: str = 'multi_modal_projector.') -> dict:
    """Our depth-2 projector keys -> transformers' ``multi_modal_projector.linear_{1,2}``."""
    out = {}
    for key, value in projector_state.items():
        index, param = re.match(r'^projector\.(\d+)\.(weight|bias)$', key).groups()
        if int(index) not in (0, 2):
            raise ValueError('transformers Llava supports a depth-2 projector only (Linear-GELU-Linear)')
        out[f'{prefix}linear_{int(index) // 2 + 1}.{param}'] = value
    return out


def projector_to_llava(projector_state: dict) -> dict:
    """Our projector keys -> original LLaVA ``model.mm_projector.{i}`` keys."""
    return {'model.mm_' + key: value for key, value in projector_state.items()}


def read_hf_llava_projector(folder) -> dict:
    """The ``multi_modal_projector.*`` tensors of a transformers Llava folder (``mmllava build``
    output, a huggingface export, or a folder transformers 4.x/5 saved: safetensors or ``.bin``,
    sharded or not), read without loading anything else.

    The keys stay in transformers' naming, so ``split_projector_state`` reports ``'huggingface'``.
    """
    out = {}
    for shard in iter_weight_shards(Path(folder), 'pretrained_pth', keep=lambda key: bool(_HF_PROJECTOR.match(key))):
        out.update(shard)
    return out


# PEFT's get_peft_model_state_dict (what XTuner saves) drops the adapter name from LoRA keys.
_UNNAMED_LORA = re.compile(r'\.(lora_[AB]|lora_embedding_[AB])\.(weight|bias)$')


def xtuner_weights_to_ours(state_dict: dict, llm_config) -> dict:
    """The non-projector weights of an XTuner LLaVA checkpoint in our names: LoRA keys get PEFT's
    adapter name back (``lora_A.weight`` -> ``lora_A.default.weight``), and an InternLM2 LLM's
    weights (``llm.*``, loaded by us as Llama) get Llama names, ``wqkv`` and its LoRA split exactly
    (``mmllava.formats.internlm2``). Our own keys pass through unchanged."""
    named = {_UNNAMED_LORA.sub(r'.\1.default.\2', key): value for key, value in state_dict.items()}
    internlm2 = {key: value for key, value in named.items() if key.startswith('llm.') and has_internlm2_names(key)}
    if not internlm2:
        return named
    rest = {key: value for key, value in named.items() if key not in internlm2}
    return {**rest, **internlm2_to_llama(internlm2, llm_config)}
