"""Plain model folders an export may contain: a causal LM with its tokenizer, a CLIP vision tower
with its image processor, both in the layout older loaders read (see ``mmllava.convert.legacy``)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmllava.convert.legacy import (clip_vision_state, legacy_config_dict, save_image_processor, save_tokenizer,
                                    write_json)
from mmllava.convert.shards import save_safetensors


def llm_state(llm: nn.Module) -> dict[str, torch.Tensor]:
    """A causal LM's weights as saved: the tied ``lm_head`` is left out, as transformers does."""
    state = llm.state_dict()
    if llm.config.tie_word_embeddings:
        state.pop('lm_head.weight', None)
    return state


def save_llm_folder(llm: nn.Module, tokenizer, save_dir: Path, dtype: torch.dtype,
                    max_shard_size: str | int = '2GB', chat_template: str | None = None,
                    extra_state: dict | None = None, config_update: dict | None = None) -> Path:
    """Write a (merged, unquantised) causal LM, its generation config and its tokenizer.

    ``extra_state`` adds weights (e.g. original LLaVA's ``model.mm_projector``) and
    ``config_update`` fields to ``config.json`` (``architectures``, ``mm_*``...).
    """
    save_dir = Path(save_dir)
    save_safetensors({**llm_state(llm), **(extra_state or {})}, save_dir, dtype, max_shard_size)
    config = legacy_config_dict(llm.config, dtype, [type(llm).__name__])
    config.update(config_update or {})
    write_json(save_dir / 'config.json', config)
    if getattr(llm, 'generation_config', None) is not None:
        llm.generation_config.save_pretrained(str(save_dir))
    save_tokenizer(tokenizer, save_dir, chat_template)
    return save_dir


def save_vision_folder(vision: nn.Module, image_processor, save_dir: Path, dtype: torch.dtype,
                       max_shard_size: str | int = '2GB') -> Path:
    """Write a (merged) ``CLIPVisionModel`` with ``vision_model.*`` keys and its image processor."""
    save_dir = Path(save_dir)
    save_safetensors(clip_vision_state(vision.state_dict()), save_dir, dtype, max_shard_size)
    write_json(save_dir / 'config.json', legacy_config_dict(vision.config, dtype, [type(vision).__name__]))
    save_image_processor(image_processor, save_dir)
    return save_dir
