"""Files older loaders can read (transformers 4.x, vLLM, LMDeploy), whatever transformers 5 writes.

transformers 5 writes ``rope_parameters`` (older versions read ``rope_theta``/``rope_scaling`` and
would silently fall back to 10000), ``dtype`` (older: ``torch_dtype``), saves a generic fast
tokenizer as ``TokenizersBackend`` (unknown to older versions), nests the image processor inside
``processor_config.json`` (older versions read ``preprocessor_config.json``) and drops CLIP's
``vision_model.`` key prefix. Everything an export writes goes through these helpers.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

_GENERIC_TOKENIZER_CLASSES = (None, 'TokenizersBackend')
# Keys transformers 5 writes into tokenizer_config.json that say nothing about the tokenizer (loading
# state, the backend name); 4.x would pass them on to the tokenizer's __init__.
_TOKENIZER_RUNTIME_KEYS = ('backend', 'is_local', 'local_files_only')


def write_json(path: Path, data: dict) -> None:
    """Pretty JSON with a final newline (the way ``save_pretrained`` writes)."""
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + '\n', encoding='utf-8')


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``'bfloat16'``."""
    return str(dtype).removeprefix('torch.')


def legacy_config_dict(config, dtype: torch.dtype, architectures: list[str] | None = None) -> dict:
    """``config.to_dict()`` with the fields older loaders need and no quantisation settings.

    Adds ``rope_theta`` (and ``rope_scaling`` for non-default RoPE, e.g. InternLM2's dynamic NTK)
    from 5.x's ``rope_parameters``, and ``torch_dtype`` beside ``dtype``.
    """
    data = config.to_dict()
    for key in ('quantization_config', '_pre_quantization_dtype', '_name_or_path'):
        data.pop(key, None)
    rope = data.get('rope_parameters') or {}
    if 'rope_theta' in rope:
        data['rope_theta'] = rope['rope_theta']
    if rope.get('rope_type', 'default') != 'default':
        data['rope_scaling'] = {'type': rope['rope_type'], 'rope_type': rope['rope_type'],
                                **{k: v for k, v in rope.items() if k not in ('rope_theta', 'rope_type')}}
    data['dtype'] = data['torch_dtype'] = dtype_name(dtype)
    if architectures is not None:
        data['architectures'] = architectures
    return data


def clip_vision_state(state_dict: dict[str, torch.Tensor], prefix: str = '') -> dict[str, torch.Tensor]:
    """CLIPVisionModel weights with the ``vision_model.`` segment older loaders require."""
    return {prefix + (k if k.startswith('vision_model.') else 'vision_model.' + k): v for k, v in state_dict.items()}


def image_processor_dict(image_processor) -> dict:
    """``CLIPImageProcessor`` settings of our :class:`mmllava.data.image.ImageProcessor`."""
    ip = image_processor
    size = ({'height': ip.size[0], 'width': ip.size[1]} if isinstance(ip.size, tuple)
            else {'shortest_edge': ip.size})
    return {
        'crop_size': {'height': ip.crop_size[0], 'width': ip.crop_size[1]},
        'do_center_crop': ip.do_center_crop,
        'do_convert_rgb': True,
        'do_normalize': ip.do_normalize,
        'do_rescale': ip.do_rescale,
        'do_resize': ip.do_resize,
        'image_mean': list(ip.image_mean),
        'image_processor_type': 'CLIPImageProcessor',
        'image_std': list(ip.image_std),
        'resample': int(ip.resample),
        'rescale_factor': ip.rescale_factor,
        'size': size,
    }


def save_image_processor(image_processor, save_dir: Path, processor_class: str | None = None) -> None:
    """``preprocessor_config.json`` (the file every transformers version reads)."""
    data = image_processor_dict(image_processor)
    if processor_class:
        data['processor_class'] = processor_class
    write_json(Path(save_dir) / 'preprocessor_config.json', data)


def save_tokenizer(tokenizer, save_dir: Path, chat_template: str | None = None,
                   processor_class: str | None = None) -> None:
    """``tokenizer.save_pretrained`` with a class name older versions know, no remote code, and the
    chat template also inside ``tokenizer_config.json`` (where versions before 4.43 look).

    transformers 5 lists extra special tokens as a list under ``extra_special_tokens``, a key 4.x
    reads as a ``{name: token}`` dict (a list fails with ``'list' object has no attribute 'keys'``):
    they are written as ``additional_special_tokens``, the name both versions read as a list."""
    save_dir = Path(save_dir)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(str(save_dir))
    config_file = save_dir / 'tokenizer_config.json'
    config = json.loads(config_file.read_text(encoding='utf-8'))
    if config.get('tokenizer_class') in _GENERIC_TOKENIZER_CLASSES:
        config['tokenizer_class'] = 'PreTrainedTokenizerFast'
    config.pop('auto_map', None)
    for key in _TOKENIZER_RUNTIME_KEYS:
        config.pop(key, None)
    extra = config.get('extra_special_tokens')
    if isinstance(extra, list):
        del config['extra_special_tokens']
        config['additional_special_tokens'] = [str(t) for t in extra]
    # 4.x's PreTrainedTokenizerFast also returns token_type_ids, which generate() refuses for LLMs.
    config.setdefault('model_input_names', ['input_ids', 'attention_mask'])
    if tokenizer.chat_template:
        config['chat_template'] = tokenizer.chat_template
    if processor_class:
        config['processor_class'] = processor_class
    write_json(config_file, config)
