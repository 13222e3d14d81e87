"""Our LLaVA (merged: no LoRA, no bitsandbytes) -> a transformers ``LlavaForConditionalGeneration``
folder in the legacy key layout, with tokenizer, processor and chat template.

Layout written (the one every loader reads: transformers 4.x and 5.x, vLLM, LMDeploy)::

    config.json                 llava config; text_config with rope_theta, torch_dtype besides dtype
    generation_config.json      eos = the tokenizer's EOS + the template's single-token stop words
    model*.safetensors(.index.json)
        vision_tower.vision_model.*   multi_modal_projector.linear_{1,2}.*
        language_model.model.*        language_model.lm_head.weight (absent when tied)
    tokenizer files             with a single-token <image> and the chat template
    preprocessor_config.json    CLIPImageProcessor settings
    processor_config.json       LlavaProcessor: patch_size, num_additional_image_tokens=1 (CLS), ...
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken

from mmllava.constants import DEFAULT_IMAGE_TOKEN
from mmllava.convert.chat_template import jinja_chat_template
from mmllava.convert.legacy import (clip_vision_state, dtype_name, legacy_config_dict, save_image_processor,
                                    save_tokenizer, write_json)
from mmllava.convert.llm_and_vision_folders import llm_state
from mmllava.convert.shards import save_safetensors
from mmllava.errors import MMLLaVAError
from mmllava.formats.llava_projector import projector_to_hf
from mmllava.templates import get_template

PROCESSOR_CLASS = 'LlavaProcessor'


def add_image_token(tokenizer) -> int:
    """Add ``<image>`` as one special token (if missing) and return its id."""
    if DEFAULT_IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(DEFAULT_IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    ids = tokenizer.encode(DEFAULT_IMAGE_TOKEN, add_special_tokens=False)
    if len(ids) != 1:
        raise MMLLaVAError(f'the tokenizer splits {DEFAULT_IMAGE_TOKEN} into {len(ids)} tokens')
    return ids[0]


def _grow_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """``weight`` with rows appended up to ``rows``, each the mean row (transformers' resize rule:
    a new token then never dominates the logits and embeds like an average token)."""
    if weight.shape[0] >= rows:
        return weight
    mean = weight.float().mean(0, keepdim=True).to(weight.dtype)
    return torch.cat([weight, mean.expand(rows - weight.shape[0], -1)])


def stop_token_ids(tokenizer, template, llm=None) -> list[int]:
    """The tokenizer's EOS, the EOS ids of ``llm``'s generation config (e.g. Llama-3's
    ``<|end_of_text|>`` besides ``<|eot_id|>``) and every stop word of ``template`` that is a single
    token: the ids ``mmllava chat`` stops at, so engines reading the export stop where it does."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    declared = getattr(getattr(llm, 'generation_config', None), 'eos_token_id', None)
    for token_id in declared if isinstance(declared, list) else [declared]:
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    for word in get_template(template).stop_words:
        word_ids = tokenizer.encode(word, add_special_tokens=False)
        if len(word_ids) == 1 and word_ids[0] not in ids:
            ids.append(word_ids[0])
    return ids


def save_llava_processor(save_dir: Path, tokenizer, image_processor, patch_size: int, template) -> None:
    """Tokenizer (with chat template) + ``preprocessor_config.json`` + ``processor_config.json``.

    ``num_additional_image_tokens=1`` counts CLIP's CLS token, which the ``default`` feature strategy
    then drops, so one ``<image>`` expands to exactly ``(crop / patch_size)^2`` tokens.
    """
    save_tokenizer(tokenizer, save_dir, jinja_chat_template(template), processor_class=PROCESSOR_CLASS)
    save_image_processor(image_processor, save_dir, processor_class=PROCESSOR_CLASS)
    # Flat (4.x) form: transformers 5 nests the image processor here, and 4.52's AutoProcessor then
    # passes it twice (``LlavaProcessor.__init__() got multiple values for argument 'image_processor'``);
    # both versions read the image processor from preprocessor_config.json.
    write_json(save_dir / 'processor_config.json', {
        'image_token': DEFAULT_IMAGE_TOKEN,
        'num_additional_image_tokens': 1,
        'patch_size': patch_size,
        'processor_class': PROCESSOR_CLASS,
        'vision_feature_select_strategy': 'default',
    })


def export_hf_llava(model, tokenizer, image_processor, template, save_dir, dtype: torch.dtype,
                    max_shard_size: str | int = '2GB') -> Path:
    """Write ``model`` (a merged :class:`~mmllava.models.LLaVAModel`) as a Llava folder.

    ``tokenizer`` gains ``<image>`` (embedding rows are appended when its id is past the LLM's
    vocabulary); its pad token becomes the text config's ``pad_token_id``. ``template`` (a name) is
    stored in ``config.json`` as ``prompt_template`` so ``mmllava chat`` needs no flag.
    """
    llm, vision = model.llm, model.visual_encoder
    if model.projector.depth != 2:
        raise MMLLaVAError(f'the huggingface format needs a depth-2 projector (Linear-GELU-Linear); '
                           f'this model has depth {model.projector.depth}: use --save-format xtuner')
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    template = get_template(template).name
    image_token_id = add_image_token(tokenizer)
    text_state = llm_state(llm)
    vocab_rows = max(text_state['model.embed_tokens.weight'].shape[0], image_token_id + 1)
    for key in ('model.embed_tokens.weight', 'lm_head.weight'):
        if key in text_state:
            text_state[key] = _grow_rows(text_state[key], vocab_rows)
    state = {
        **clip_vision_state(vision.state_dict(), 'vision_tower.'),
        **projector_to_hf(dict(model.projector.state_dict(prefix='projector.'))),
        **{'language_model.' + k: v for k, v in text_state.items()},
    }
    print(f'Writing weights ({dtype_name(dtype)}) to {save_dir}', flush=True)
    save_safetensors(state, save_dir, dtype, max_shard_size)
    del state, text_state

    text_config = legacy_config_dict(llm.config, dtype, [type(llm).__name__])
    text_config.update(vocab_size=vocab_rows, pad_token_id=tokenizer.pad_token_id)
    patch_size = vision.config.patch_size
    write_json(save_dir / 'config.json', {
        'architectures': ['LlavaForConditionalGeneration'],
        'model_type': 'llava',
        'vision_config': legacy_config_dict(vision.config, dtype),
        'text_config': text_config,
        'image_token_index': image_token_id,
        'image_seq_length': image_processor.num_image_tokens,
        'projector_hidden_act': 'gelu',
        'vision_feature_layer': model.visual_select_layer,
        'vision_feature_select_strategy': 'default',
        'multimodal_projector_bias': model.projector[0].bias is not None,
        'tie_word_embeddings': bool(llm.config.tie_word_embeddings),
        'pad_token_id': tokenizer.pad_token_id,
        'dtype': dtype_name(dtype),
        'torch_dtype': dtype_name(dtype),
        'prompt_template': template,
    })
    write_json(save_dir / 'generation_config.json', {
        'bos_token_id': tokenizer.bos_token_id,
        'eos_token_id': stop_token_ids(tokenizer, template, llm),
        'pad_token_id': tokenizer.pad_token_id,
    })
    save_llava_processor(save_dir, tokenizer, image_processor, patch_size, template)
    return save_dir
