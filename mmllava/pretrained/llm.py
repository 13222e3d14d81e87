"""Load a local causal-LM folder into a transformers-native module.

InternLM2 folders (remote-code layout) become ``LlamaForCausalLM``; Llama, Qwen2 and other folders
transformers knows load as themselves. ``trust_remote_code`` is never turned on by us.
"""
from __future__ import annotations

import os
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, LlamaForCausalLM

from mmllava.errors import MMLLaVAError, concerning
from mmllava.formats.internlm2 import internlm2_config_to_llama, internlm2_to_llama
from mmllava.formats.strict import check_loading_info, check_weights, expected_shapes, shapes
from mmllava.paths import require_dir
from mmllava.pretrained.folder_reading import attention_kwargs, dtype_kwargs, iter_weight_shards, read_json, weight_shapes

WHAT = 'llm_name_or_path'


def is_internlm2(config: dict) -> bool:
    """Whether a ``config.json`` dict describes an InternLM2 causal LM."""
    return config.get('model_type') == 'internlm2' or 'InternLM2ForCausalLM' in (config.get('architectures') or ())


def _load_internlm2(folder: Path, config_dict: dict, kwargs: dict):
    """InternLM2 -> ``LlamaForCausalLM`` through the ``state_dict`` path of ``from_pretrained``.

    Memory/disk choice: shards are read and converted one at a time in memory (splitting ``wqkv``
    copies only the attention weights), nothing is written to disk, and the converted state dict is
    dropped on return. The peak is that state dict plus the module being filled (which shares its
    tensors when no cast or quantization is asked for). ``from_pretrained`` rather than
    ``load_state_dict`` keeps dtype handling, bitsandbytes quantization and attention selection
    identical to the native families. The converted keys are checked against the Llama module
    before it is filled (``mmllava.formats.strict``).
    """
    config = internlm2_config_to_llama(config_dict)
    config._name_or_path = str(folder)
    state_dict = {}
    try:
        for shard in iter_weight_shards(folder, WHAT):
            state_dict.update(internlm2_to_llama(shard, config))
    except MMLLaVAError as e:
        raise MMLLaVAError(f'{WHAT}: {folder}: {e}') from None
    expected = expected_shapes(LlamaForCausalLM, config)
    check_weights(WHAT, folder, expected, shapes(state_dict), 'LLM', tied=config.tie_word_embeddings)
    model, info = LlamaForCausalLM.from_pretrained(None, config=config, state_dict=state_dict,
                                                   output_loading_info=True, **kwargs)
    check_loading_info(WHAT, folder, info, 'LLM', expected, tied=config.tie_word_embeddings)
    if (folder / 'generation_config.json').is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model


def _load_native(folder: Path, kwargs: dict):
    """A causal LM transformers knows (Llama, Qwen2, ...), saved by transformers 4.x or 5.x: the
    file's keys and shapes are compared with the module's before ``from_pretrained`` fills it."""
    try:
        config = AutoConfig.from_pretrained(folder)
        model_class = AutoModelForCausalLM._model_mapping[type(config)]
    except (OSError, ValueError, KeyError) as e:
        raise MMLLaVAError(f'{WHAT}: cannot load {folder}: {str(e).splitlines()[0]}') from None
    tied = bool(getattr(config.get_text_config(), 'tie_word_embeddings', False))
    expected = expected_shapes(model_class, config)
    check_weights(WHAT, folder, expected, weight_shapes(folder, WHAT), 'LLM', tied=tied)
    try:
        model, info = model_class.from_pretrained(folder, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as e:
        raise MMLLaVAError(f'{WHAT}: cannot load {folder}: {str(e).splitlines()[0]}') from None
    check_loading_info(WHAT, folder, info, 'LLM', expected, tied=tied)
    return model


def load_llm(path: str | os.PathLike, torch_dtype=None, quantization_config=None, attn_implementation=None,
             trust_remote_code: bool = False):
    """Load the causal LM in the local folder ``path`` as a transformers-native ``PreTrainedModel``.

    ``torch_dtype``: ``None``, ``'auto'``, a name (``'bfloat16'``) or a ``torch.dtype``.
    ``quantization_config``: e.g. a ``BitsAndBytesConfig`` for QLoRA (works for InternLM2 too).
    ``attn_implementation``: ``None`` picks flash-attention-2 where it can run, else SDPA
    (``mmllava.pretrained.folder_reading.attention_kwargs``).
    Loading is strict: a missing, unused or wrong-shaped weight is an ``MMLLaVAError``, checked
    against the unquantised shapes before quantization. With ``trust_remote_code=True`` an
    InternLM2 folder is loaded with its own remote code instead (transformers' checks only).
    """
    with concerning(WHAT, path):  # what fails inside is about this setting's value
        folder = require_dir(path, WHAT)
        config_dict = read_json(folder / 'config.json', WHAT)
        kwargs = dtype_kwargs(torch_dtype)
        kwargs.update(attention_kwargs(attn_implementation, kwargs))
        if quantization_config is not None:
            kwargs['quantization_config'] = quantization_config
        if is_internlm2(config_dict) and not trust_remote_code:
            return _load_internlm2(folder, config_dict, kwargs)
        if not trust_remote_code:
            return _load_native(folder, kwargs)
        try:
            return AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust_remote_code, **kwargs)
        except (OSError, ValueError) as e:
            raise MMLLaVAError(f'{WHAT}: cannot load {folder}: {str(e).splitlines()[0]}') from e
