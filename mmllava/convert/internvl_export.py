"""Our InternVL (LoRA merged: no adapters, no bitsandbytes) -> an official or a native transformers folder.

``official`` (default; what the InternVL2-2B food fine-tune's ``convert_to_official.py`` writes, what LMDeploy, vLLM and
InternVL's own code load with ``trust_remote_code``)::

    config.json            the source folder's InternVLChatConfig, dtype updated, + prompt_template
    model*.safetensors     vision_model.* (packed attn.qkv), mlp1.*, language_model.* (InternLM2 names, packed wqkv)
    *.py                   the source folder's remote code, copied: every file its auto_map names
                           (a source lacking one is refused, see check_remote_code)
    tokenizer files        the source folder's (sentencepiece + <img>, </img>, <IMG_CONTEXT>), with chat_template
    generation_config.json eos = </s> + <|im_end|>

``huggingface`` (``InternVLForConditionalGeneration``, no remote code)::

    config.json            InternVLConfig: Llama text_config (rope_theta too), tie_word_embeddings false for InternLM2
    model*.safetensors     model.vision_tower.*, model.multi_modal_projector.*, model.language_model.*, lm_head.weight
    tokenizer files        fast tokenizer with start/end/context image tokens named, chat_template
    preprocessor_config.json / processor_config.json   GotOcr2ImageProcessor + InternVLProcessor settings
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from mmllava.convert.chat_template import jinja_chat_template
from mmllava.convert.hf_llava import stop_token_ids
from mmllava.convert.legacy import dtype_name, legacy_config_dict, save_tokenizer, write_json
from mmllava.convert.llm_and_vision_folders import llm_state
from mmllava.convert.merge import merge_lora
from mmllava.convert.shards import save_safetensors
from mmllava.data.internvl_dataset import IMG_CONTEXT_TOKEN, IMG_END_TOKEN, IMG_START_TOKEN, image_token_ids
from mmllava.errors import MMLLaVAError
from mmllava.formats.internvl_native import native_to_official, official_config_to_native
from mmllava.templates import get_template

INTERNVL_SAVE_FORMATS = ('official', 'huggingface')
# Tokenizer files of an official folder (sentencepiece InternLM2Tokenizer); whichever exist are copied.
_TOKENIZER_FILES = ('tokenizer.model', 'tokenizer_config.json', 'special_tokens_map.json', 'added_tokens.json',
                    'tokenizer.json')
PROCESSOR_CLASS = 'InternVLProcessor'


def native_state(model) -> dict[str, torch.Tensor]:
    """A merged :class:`~mmllava.models.InternVLModel` as ``InternVLForConditionalGeneration`` weights."""
    state = {'model.vision_tower.' + k: v for k, v in model.vision_tower.state_dict().items()}
    state.update({'model.multi_modal_projector.' + k: v for k, v in model.projector.state_dict().items()})
    for key, tensor in llm_state(model.llm).items():
        state[key if key.startswith('lm_head.') else 'model.language_model.' + key.removeprefix('model.')] = tensor
    return state


def _with_dtype(config: dict, dtype: torch.dtype) -> dict:
    """``config`` (and its sub-configs) saying ``dtype`` under both names old and new loaders read."""
    config = dict(config)
    for key in ('llm_config', 'vision_config'):
        if isinstance(config.get(key), dict):
            config[key] = _with_dtype(config[key], dtype)
    config['torch_dtype'] = dtype_name(dtype)
    config.pop('dtype', None)
    return config


def _generation_config(tokenizer, template: str, llm) -> dict:
    return {'bos_token_id': tokenizer.bos_token_id, 'eos_token_id': stop_token_ids(tokenizer, template, llm),
            'pad_token_id': tokenizer.pad_token_id}


def auto_map_files(*configs: dict) -> list[str]:
    """The module files (``configuration_internvl_chat.py``...) that the ``auto_map`` entries of
    ``configs`` and their sub-configs (``llm_config``...) name, sorted."""
    files = set()

    def visit(config: dict) -> None:
        for key, value in config.items():
            if key == 'auto_map' and isinstance(value, dict):
                for refs in value.values():
                    for ref in refs if isinstance(refs, list) else [refs]:
                        if ref:  # 'module.Class' or 'repo--module.Class'
                            files.add(ref.split('--')[-1].rsplit('.', 1)[0] + '.py')
            elif isinstance(value, dict):
                visit(value)

    for config in configs:
        visit(config)
    return sorted(files)


def check_remote_code(source: Path, official: dict) -> None:
    """Refuse, in one line, a source folder whose ``auto_map`` (config.json, tokenizer_config.json)
    names remote-code files it does not contain: an official export copies the source's ``*.py``
    and would otherwise point trust_remote_code readers (vLLM, LMDeploy, transformers) at files it lacks."""
    tokenizer_config = source / 'tokenizer_config.json'
    configs = [official] + ([json.loads(tokenizer_config.read_text(encoding='utf-8'))]
                            if tokenizer_config.is_file() else [])
    missing = [name for name in auto_map_files(*configs) if not (source / name).is_file()]
    if missing:
        raise MMLLaVAError(f'{source}: its auto_map names remote code it does not contain ({", ".join(missing)}), '
                           'so an official export would point at missing files: add them to the folder (they '
                           'come with the model) or use --save-format huggingface')


def export_official(model, tokenizer, template: str, save_dir, dtype: torch.dtype,
                    max_shard_size: str | int = '2GB') -> Path:
    """Write a merged ``InternVLModel`` in the official InternVL layout (see the module docstring)."""
    source, official = Path(model.source), model.official_config
    check_remote_code(source, official)  # before anything is written
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    print(f'Writing weights ({dtype_name(dtype)}) to {save_dir}', flush=True)
    save_safetensors(native_to_official(native_state(model), official), save_dir, dtype, max_shard_size)
    write_json(save_dir / 'config.json', {**_with_dtype(official, dtype), 'prompt_template': template})
    write_json(save_dir / 'generation_config.json', _generation_config(tokenizer, template, model.llm))
    for path in [*source.glob('*.py'), *(source / name for name in _TOKENIZER_FILES)]:
        if path.is_file():
            shutil.copyfile(path, save_dir / path.name)
    tokenizer_config = save_dir / 'tokenizer_config.json'
    if tokenizer_config.is_file():  # serving engines take the prompt format from the tokenizer
        data = json.loads(tokenizer_config.read_text(encoding='utf-8'))
        write_json(tokenizer_config, {**data, 'chat_template': jinja_chat_template(template)})
    else:
        save_tokenizer(tokenizer, save_dir, jinja_chat_template(template))
    return save_dir


def export_huggingface(model, tokenizer, image_processor, template: str, save_dir, dtype: torch.dtype,
                       max_shard_size: str | int = '2GB') -> Path:
    """Write a merged ``InternVLModel`` as an ``InternVLForConditionalGeneration`` folder with its processor."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    _, _, context_id = image_token_ids(tokenizer)
    native = official_config_to_native(model.official_config, image_token_id=context_id)
    print(f'Writing weights ({dtype_name(dtype)}) to {save_dir}', flush=True)
    save_safetensors(native_state(model), save_dir, dtype, max_shard_size)
    config = native.to_dict()
    config['text_config'] = legacy_config_dict(model.llm.config, dtype, [type(model.llm).__name__])
    config['vision_config'] = legacy_config_dict(native.vision_config, dtype)
    config.update(dtype=dtype_name(dtype), torch_dtype=dtype_name(dtype), prompt_template=template)
    write_json(save_dir / 'config.json', config)
    write_json(save_dir / 'generation_config.json', _generation_config(tokenizer, template, model.llm))
    _save_processor(tokenizer, image_processor, native.image_seq_length, template, save_dir)
    return save_dir


def _save_processor(tokenizer, image_processor, image_seq_length: int, template: str, save_dir: Path) -> None:
    """Tokenizer (naming the image tokens ``InternVLProcessor`` reads) + image processor settings.

    transformers' ``GotOcr2ImageProcessor`` tiles with its own grid rule, which can pick another grid
    than InternVL's for some aspect ratios; ``mmllava chat`` on the official export tiles exactly."""
    # InternVLProcessor expands only <IMG_CONTEXT> (its tokenizer's context_image_token), not <image>.
    save_tokenizer(tokenizer, save_dir, jinja_chat_template(template, IMG_CONTEXT_TOKEN),
                   processor_class=PROCESSOR_CLASS)
    tokenizer_config = save_dir / 'tokenizer_config.json'
    data = json.loads(tokenizer_config.read_text(encoding='utf-8'))
    named = dict(start_image_token=IMG_START_TOKEN, end_image_token=IMG_END_TOKEN,
                 context_image_token=IMG_CONTEXT_TOKEN, video_token='<video>')
    # 5.x reads the named tokens at the top level, 4.x only from an ``extra_special_tokens`` dict
    # (5.x merges that dict too); the unnamed extra tokens are in additional_special_tokens (save_tokenizer).
    data.update(named, extra_special_tokens=named)
    write_json(tokenizer_config, data)
    size = image_processor.image_size
    settings = {
        'image_processor_type': 'GotOcr2ImageProcessor', 'processor_class': PROCESSOR_CLASS,
        'crop_to_patches': image_processor.dynamic, 'min_patches': image_processor.min_num,
        'max_patches': image_processor.max_num, 'size': {'height': size, 'width': size},
        'do_resize': True, 'resample': 3, 'do_rescale': True, 'rescale_factor': 1 / 255, 'do_normalize': True,
        'image_mean': image_processor.image_mean.tolist(), 'image_std': image_processor.image_std.tolist(),
        'do_convert_rgb': True}
    write_json(save_dir / 'preprocessor_config.json', settings)
    # Flat (4.x) form, as for LLaVA (mmllava.convert.hf_llava.save_llava_processor): a nested image
    # processor is passed twice by 4.52's AutoProcessor.
    write_json(save_dir / 'processor_config.json',
               {'processor_class': PROCESSOR_CLASS, 'image_seq_length': image_seq_length})


def export_internvl(model, tokenizer, image_processor, save_format: str, save_dir, dtype: torch.dtype,
                    template: str, max_shard_size: str | int = '2GB') -> Path:
    """Merge LoRA (and dequantise a QLoRA LLM) in place, then write ``save_format``."""
    if save_format not in INTERNVL_SAVE_FORMATS:
        raise MMLLaVAError(f'InternVL exports as {" or ".join(INTERNVL_SAVE_FORMATS)}, not {save_format!r}')
    template = get_template(template).name
    print('Merging LoRA' if model.use_llm_lora or model.use_visual_encoder_lora else 'Preparing weights', flush=True)
    model.llm = merge_lora(model.llm, dtype)
    model.vision_tower = merge_lora(model.vision_tower, dtype)
    if save_format == 'official':
        return export_official(model, tokenizer, template, save_dir, dtype, max_shard_size)
    return export_huggingface(model, tokenizer, image_processor, template, save_dir, dtype, max_shard_size)
