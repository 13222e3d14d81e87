"""``mmllava build``: an untrained LLaVA (transformers Llava folder) from a vision encoder and an LLM.

The recipe of the Qwen2.5-3B LLaVA built from scratch (CLIP-ViT-L/14-336 + Qwen2.5): add a
single-token ``<image>`` (embedding rows appended when needed), align the pad token with the LLM's
(Qwen2.5: ``<|endoftext|>``), keep the LLM's and CLIP's weights, initialise the projector, and save
model + processor (``preprocessor_config.json`` and ``processor_config.json``).

To train from it, keep the config's ``llm_name_or_path`` / ``visual_encoder_name_or_path`` pointing
at the original folders and set ``pretrained_pth = BUILT_DIR``: the projector is read from the
folder's ``multi_modal_projector.*`` weights (``mmllava.formats.llava_projector``). ``mmllava chat BUILT_DIR``
loads it as it is.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from mmllava.convert.hf_llava import export_hf_llava
from mmllava.errors import MMLLaVAError
from mmllava.models import LLaVAModel
from mmllava.pretrained import load_image_processor, load_llm, load_tokenizer, load_vision_encoder
from mmllava.templates import TEMPLATES, get_template


def guess_template(tokenizer, llm_config) -> str:
    """The prompt template of an LLM family, from its special tokens (or an error asking for one)."""
    vocab = tokenizer.get_vocab()
    if '<|eot_id|>' in vocab:
        return 'llama3_chat'
    if '<|im_start|>' in vocab:
        return 'qwen_chat' if llm_config.model_type == 'qwen2' else 'internlm2_chat'
    raise MMLLaVAError(f'cannot tell the prompt template of {llm_config._name_or_path}; pass --prompt-template '
                       f'(one of: {", ".join(TEMPLATES)})')


def build_llava(llm: str | os.PathLike, visual_encoder: str | os.PathLike, save_dir: str | os.PathLike,
                torch_dtype: str = 'auto', prompt_template: str | None = None,
                max_shard_size: str | int = '2GB') -> Path:
    """Write a ``LlavaForConditionalGeneration`` folder built from ``llm`` and ``visual_encoder``.

    ``torch_dtype``: ``auto`` keeps the LLM's dtype (the vision tower and projector follow it).
    ``prompt_template``: recorded for chat and the tokenizer's chat template; guessed from the
    tokenizer's special tokens when omitted.
    """
    print(f'Loading {llm} and {visual_encoder}', flush=True)
    language_model = load_llm(llm, torch_dtype=None if torch_dtype == 'auto' else torch_dtype)
    dtype = language_model.get_input_embeddings().weight.dtype
    tokenizer = load_tokenizer(llm)
    template = get_template(prompt_template).name if prompt_template else guess_template(
        tokenizer, language_model.config)
    model = LLaVAModel(llm=language_model, visual_encoder=load_vision_encoder(visual_encoder, torch_dtype=dtype),
                       freeze_llm=True, freeze_visual_encoder=True, use_activation_checkpointing=False)
    with torch.no_grad():
        export_hf_llava(model, tokenizer, load_image_processor(visual_encoder), template, save_dir, dtype,
                        max_shard_size)
    print(f'All done: {save_dir} (prompt template {template})', flush=True)
    return Path(save_dir)
