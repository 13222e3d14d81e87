"""Our LLaVA (merged) -> the original LLaVA repository's layout (``--save-format official``)::

    config.json       the LLM's config + mm_* fields (mm_vision_tower, mm_hidden_size, mm_projector_type,
                      mm_vision_select_layer, mm_vision_select_feature=patch, image_aspect_ratio, ...)
    model*.safetensors  model.* and lm_head.weight of the LLM (LoRA merged) + model.mm_projector.{0,2}.*
    tokenizer files
    visual_encoder/   the merged vision tower, only when it was trained (mm_vision_tower points here)

Original LLaVA marks images with the index -200 inside the model, so no ``<image>`` token is added.
"""
from __future__ import annotations

from pathlib import Path

import torch

from mmllava.convert.chat_template import jinja_chat_template
from mmllava.convert.llm_and_vision_folders import save_llm_folder, save_vision_folder
from mmllava.errors import MMLLaVAError
from mmllava.formats.llava_projector import projector_to_llava

# LLM model_type -> (architecture, model_type) of the LLaVA class that wraps it.
OFFICIAL_CLASSES = {
    'llama': ('LlavaLlamaForCausalLM', 'llava_llama'),
    'mistral': ('LlavaMistralForCausalLM', 'llava_mistral'),
    'qwen2': ('LlavaQwenForCausalLM', 'llava_qwen'),
}


def projector_type(depth: int) -> str:
    """LLaVA's name of a projector: ``linear`` or ``mlp{depth}x_gelu``."""
    return 'linear' if depth == 1 else f'mlp{depth}x_gelu'


def export_official(model, tokenizer, template: str, save_dir, dtype: torch.dtype, vision_source: str,
                    vision_trained: bool, image_processor=None, pad_image_to_square: bool = True,
                    max_shard_size: str | int = '2GB') -> Path:
    """Write a merged :class:`~mmllava.models.LLaVAModel` in the original LLaVA layout.

    ``vision_source`` is the vision tower the config loaded (written as ``mm_vision_tower``); when
    ``vision_trained`` the merged tower is saved to ``visual_encoder/`` and referenced instead.
    """
    llm = model.llm
    model_type = llm.config.model_type
    if model_type not in OFFICIAL_CLASSES:
        raise MMLLaVAError(f'the official LLaVA format supports {", ".join(OFFICIAL_CLASSES)} LLMs, '
                           f'not {model_type!r}: use --save-format huggingface')
    architecture, llava_type = OFFICIAL_CLASSES[model_type]
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if vision_trained:
        print('Saving visual encoder', flush=True)
        vision_source = str(save_vision_folder(model.visual_encoder, image_processor, save_dir / 'visual_encoder',
                                               dtype, max_shard_size).resolve())
    print(f'Writing weights to {save_dir}', flush=True)
    projector = projector_to_llava(dict(model.projector.state_dict(prefix='projector.')))
    return save_llm_folder(llm, tokenizer, save_dir, dtype, max_shard_size, jinja_chat_template(template),
                           extra_state=projector, config_update={
                               'architectures': [architecture],
                               'model_type': llava_type,
                               'mm_vision_tower': vision_source,
                               'mm_hidden_size': model.visual_encoder.config.hidden_size,
                               'mm_projector_type': projector_type(model.projector.depth),
                               'mm_vision_select_layer': model.visual_select_layer,
                               'mm_vision_select_feature': 'patch',
                               'mm_use_im_start_end': False,
                               'mm_use_im_patch_token': False,
                               'mm_patch_merge_type': 'flat',
                               'image_aspect_ratio': 'pad' if pad_image_to_square else 'square',
                               'tune_mm_mlp_adapter': False,
                               'freeze_mm_mlp_adapter': False,
                               'use_mm_proj': True,
                               'tokenizer_padding_side': 'right',
                               'prompt_template': template,
                           })
