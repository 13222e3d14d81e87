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

from transformers import AutoModelForCausalLM, GenerationConfig, InternVLVisionModel
from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector

from mmllava.data.internvl_image import InternVLImageProcessor
from mmllava.errors import MMLLaVAError, concerning
from mmllava.formats.internvl_native import (OFFICIAL_PARTS, is_native_internvl, is_official_internvl,
                                      native_config_to_official, native_folder_key, official_config_to_native,
                                      official_to_native)
from mmllava.formats.strict import check_loading_info, expected_shapes, problems, shapes
from mmllava.paths import require_dir
from mmllava.pretrained.folder_reading import attention_kwargs, dtype_kwargs, iter_weight_shards, read_json

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


def _from_state_dict(model_class, config, state_dict: dict, folder: Path, component: str, tied: bool = False,
                     **kwargs):
    """``model_class.from_pretrained`` on an in-memory state dict already checked against the module;
    what transformers reports missing or unexpected is still an error (never random weights)."""
    model, info = model_class.from_pretrained(None, config=config, state_dict=state_dict, output_loading_info=True,
                                              **kwargs)
    check_loading_info(WHAT, folder, info, component, state_dict, tied=tied)
    return model


def _check_parts(folder: Path, config, vision_state: dict, projector_state: dict, llm_state: dict,
                 llm_class, stray: list[str]) -> None:
    """Every weight of the three parts read, every tensor used, shapes right; one line otherwise."""
    tied = bool(getattr(config.text_config, 'tie_word_embeddings', False))
    found = problems(expected_shapes(InternVLVisionModel, config.vision_config), shapes(vision_state), 'vision')
    found += problems(expected_shapes(InternVLMultiModalProjector, config), shapes(projector_state), 'projector')
    found += problems(expected_shapes(llm_class, config.text_config), shapes(llm_state), 'LLM', tied=tied)
    if stray:
        found.append(f'{len(stray)} tensors of no InternVL part unused ({", ".join(sorted(stray)[:3])}'
                     f'{", …" if len(stray) > 3 else ""})')
    if found:
        raise MMLLaVAError(f'{WHAT}: {folder}: ' + '; '.join(found))


def _read_state(folder: Path, config_json: dict) -> tuple[dict, list[str]]:
    """The folder's tensors in native keys (official folders converted) and the keys of no part."""
    official = is_official_internvl(config_json)
    state, stray = {}, []
    try:
        for shard in iter_weight_shards(folder, WHAT):
            if official:
                stray += [key for key in shard if not key.startswith(OFFICIAL_PARTS)]
                state.update(official_to_native({k: v for k, v in shard.items() if k.startswith(OFFICIAL_PARTS)},
                                                config_json))
            else:
                for key, tensor in shard.items():
                    native = native_folder_key(key)
                    if native is None:
                        stray.append(key)
                    else:
                        state[native] = tensor
    except MMLLaVAError as e:  # a packed qkv/wqkv that cannot be split
        raise MMLLaVAError(f'{WHAT}: {folder}: {e}') from None
    return state, stray


def load_internvl(path: str | os.PathLike, torch_dtype=None, quantization_config=None,
                  attn_implementation=None) -> InternVLParts:
    """Load the InternVL folder ``path`` as :class:`InternVLParts`: an official (remote-code
    ``InternVLChatModel``) folder, or a transformers-native ``InternVLForConditionalGeneration`` one
    (saved by transformers 4.52+ or 5, or our ``huggingface`` export). Loading is strict
    (``mmllava.formats.strict``): a missing, unused or wrong-shaped weight is an ``MMLLaVAError``.

    ``torch_dtype``: ``None``, ``'auto'``, a name or a ``torch.dtype`` (all parts);
    ``quantization_config``: e.g. a ``BitsAndBytesConfig`` for QLoRA, applied to the LLM only.
    """
    with concerning(WHAT, path):  # what fails inside is about this setting's value
        folder = require_dir(path, WHAT)
        config_json = read_json(folder / 'config.json', WHAT)
        if is_official_internvl(config_json):
            official = config_json
        elif is_native_internvl(config_json):
            official = native_config_to_official(config_json, folder)
        else:
            raise MMLLaVAError(f'{WHAT}: {folder} is a {config_json.get("model_type")!r} model, expected an InternVL '
                               'folder (official InternVLChatModel or transformers InternVLForConditionalGeneration)')
        config = official_config_to_native(official)
        config._name_or_path = str(folder)
        state, stray = _read_state(folder, config_json)
        vision_state, projector_state, llm_state = _split_native(state)
        del state
        llm_class = AutoModelForCausalLM._model_mapping[type(config.text_config)]
        _check_parts(folder, config, vision_state, projector_state, llm_state, llm_class, stray)
        kwargs = dtype_kwargs(torch_dtype)
        if attn_implementation is not None:
            kwargs['attn_implementation'] = attn_implementation
        vision_tower = _from_state_dict(InternVLVisionModel, config.vision_config, vision_state, folder, 'vision',
                                        **kwargs)
        projector = InternVLMultiModalProjector(config)
        projector.load_state_dict(projector_state)  # checked above: strict load cannot fail
        projector.to(next(vision_tower.parameters()).dtype)
        kwargs.update(attention_kwargs(attn_implementation, kwargs))  # the LLM only: flash-attention-2 where it can run
        if quantization_config is not None:
            kwargs['quantization_config'] = quantization_config
        llm = _from_state_dict(llm_class, config.text_config, llm_state, folder, 'LLM',
                               tied=bool(getattr(config.text_config, 'tie_word_embeddings', False)), **kwargs)
        if (folder / 'generation_config.json').is_file():
            llm.generation_config = GenerationConfig.from_pretrained(folder)
        return InternVLParts(vision_tower, projector, llm, config, official, folder)


def load_internvl_image_processor(path: str | os.PathLike, max_dynamic_patch: int | None = None):
    """The dynamic-tiling image processor of the official InternVL folder ``path``
    (``max_dynamic_patch`` overrides the folder's, as the fine-tuning recipes do)."""
    return InternVLImageProcessor.from_pretrained(path, max_dynamic_patch=max_dynamic_patch)
