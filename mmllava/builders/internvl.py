"""Load an official InternVL2 folder (remote-code ``InternVLChatModel`` layout) without remote code.

The checkpoint becomes transformers-native parts: ``InternVLVisionModel`` (InternViT),
``InternVLMultiModalProjector`` (``mlp1``) and a causal LM (InternLM2 -> ``LlamaForCausalLM``), so
LoRA, QLoRA (of the LLM only, as XTuner's ``quantization_llm``), SDPA and gradient checkpointing
work as for every other family. ``trust_remote_code`` is never turned on.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from mmllava.builders.folders import attention_kwargs, dtype_kwargs, iter_weight_shards, read_json, require_dir
from mmllava.errors import MMLLaVAError

WHAT = 'path'


@dataclasses.dataclass
class InternVLParts:
    """An InternVL checkpoint as native modules; ``official_config`` is its ``config.json`` (tiling
    settings, template) and ``config`` the equivalent native ``InternVLConfig``."""

    vision_tower: Any
    projector: Any
    llm: Any
    config: Any
    official_config: dict
    path: Path


def _split_native(state: dict) -> tuple[dict, dict, dict]:
    """Native ``InternVLForConditionalGeneration`` keys -> (vision tower, projector, causal LM) state dicts."""
    vision, projector, llm = {}, {}, {}
    for key, tensor in state.items():
        if key.startswith('model.vision_tower.'):
            vision[key.removeprefix('model.vision_tower.')] = tensor
        elif key.startswith('model.multi_modal_projector.'):
            projector[key.removeprefix('model.multi_modal_projector.')] = tensor
        elif key.startswith('model.language_model.'):
            llm['model.' + key.removeprefix('model.language_model.')] = tensor
        else:  # lm_head.*
            llm[key] = tensor
    return vision, projector, llm


def _from_state_dict(model_class, config, state_dict: dict, folder: Path, **kwargs):
    """``model_class.from_pretrained`` on an in-memory state dict; any missing or unexpected key is an error
    (transformers would only warn and leave random weights)."""
    model, info = model_class.from_pretrained(None, config=config, state_dict=state_dict, output_loading_info=True,
                                              **kwargs)
    problems = {kind: sorted(info.get(kind) or ()) for kind in ('missing_keys', 'unexpected_keys')}
    if any(problems.values()):
        raise MMLLaVAError(f'{WHAT}: {folder} does not match its config ({model_class.__name__}): '
                           + '; '.join(f'{kind.replace("_", " ")}: {keys[:6]}' for kind, keys in problems.items()
                                       if keys))
    return model


def load_internvl(path: str | os.PathLike, torch_dtype=None, quantization_config=None,
                  attn_implementation=None) -> InternVLParts:
    """Load the official InternVL folder ``path`` as :class:`InternVLParts`.

    ``torch_dtype``: ``None``, ``'auto'``, a name or a ``torch.dtype`` (all parts);
    ``quantization_config``: e.g. a ``BitsAndBytesConfig`` for QLoRA, applied to the LLM only.
    """
    from transformers import AutoModelForCausalLM, GenerationConfig, InternVLVisionModel
    from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector

    from mmllava.formats.internvl import is_official_internvl, official_config_to_native, official_to_native

    folder = require_dir(path, WHAT)
    official = read_json(folder / 'config.json', WHAT)
    if not is_official_internvl(official):
        raise MMLLaVAError(f'{WHAT}: {folder} is a {official.get("model_type")!r} model, expected an official '
                           'InternVL folder (InternVLChatModel)')
    config = official_config_to_native(official)
    config._name_or_path = str(folder)
    state = {}
    for shard in iter_weight_shards(folder, WHAT):
        state.update(official_to_native(shard, official))
    vision_state, projector_state, llm_state = _split_native(state)
    del state
    kwargs = dtype_kwargs(torch_dtype)
    if attn_implementation is not None:
        kwargs['attn_implementation'] = attn_implementation
    vision_tower = _from_state_dict(InternVLVisionModel, config.vision_config, vision_state, folder, **kwargs)
    projector = InternVLMultiModalProjector(config)
    try:
        projector.load_state_dict(projector_state)
    except RuntimeError as e:
        raise MMLLaVAError(f'{WHAT}: {folder}: mlp1 does not match its config: {str(e).splitlines()[-1]}') from None
    projector.to(next(vision_tower.parameters()).dtype)
    llm_class = AutoModelForCausalLM._model_mapping[type(config.text_config)]
    kwargs.update(attention_kwargs(attn_implementation, kwargs))  # the LLM only: flash-attention-2 where it can run
    if quantization_config is not None:
        kwargs['quantization_config'] = quantization_config
    llm = _from_state_dict(llm_class, config.text_config, llm_state, folder, **kwargs)
    if (folder / 'generation_config.json').is_file():
        llm.generation_config = GenerationConfig.from_pretrained(folder)
    return InternVLParts(vision_tower, projector, llm, config, official, folder)


def load_internvl_image_processor(path: str | os.PathLike, max_dynamic_patch: int | None = None):
    """The dynamic-tiling image processor of the official InternVL folder ``path``
    (``max_dynamic_patch`` overrides the folder's, as the fine-tuning recipes do)."""
    from mmllava.data.internvl_image import InternVLImageProcessor

    return InternVLImageProcessor.from_pretrained(path, max_dynamic_patch=max_dynamic_patch)
