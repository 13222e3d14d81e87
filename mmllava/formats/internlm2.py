"""InternLM2 <-> Llama: config and state-dict conversion (pure functions, no file IO).

InternLM2 is a Llama network with other names and a packed ``attention.wqkv``. With
``g = heads // kv_heads`` the packed weight is ``[kv_heads, g + 2, head_dim, hidden]``: per KV head,
``g`` query heads, then its key head, then its value head. Splitting it needs no permutation:
both families use the same (non-interleaved, ``rotate_half``) rotary embedding.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch
from transformers import LlamaConfig

from mmllava.errors import MMLLaVAError
from mmllava.formats.strict import is_recomputed_buffer

# Module-name renames, InternLM2 -> Llama; each pattern matches a whole dotted segment.
_RENAMES = (
    ('tok_embeddings', 'embed_tokens'),
    ('attention.wo', 'self_attn.o_proj'),
    ('feed_forward.w1', 'mlp.gate_proj'),
    ('feed_forward.w3', 'mlp.up_proj'),
    ('feed_forward.w2', 'mlp.down_proj'),
    ('attention_norm', 'input_layernorm'),
    ('ffn_norm', 'post_attention_layernorm'),
)
_OUTPUT = re.compile(r'(^|\.)output\.(weight|bias)$')
_LM_HEAD = re.compile(r'(^|\.)lm_head\.(weight|bias)$')
# The packed projection, or its PEFT parts: the wrapped layer and LoRA's B have wqkv's rows (split
# like the weight); LoRA's A maps the input, so q, k and v share it (an exact split of B @ A).
_WQKV = re.compile(r'^(.*)attention\.wqkv\.((?:base_layer\.|lora_B\.[^.]+\.)?(?:weight|bias))$')
_WQKV_LORA_A = re.compile(r'^(.*)attention\.wqkv\.(lora_A\.[^.]+\.weight)$')
_Q_PROJ = re.compile(r'^(.*)self_attn\.q_proj\.(weight|bias)$')


def internlm2_config_to_llama(cfg_dict: Mapping[str, Any]) -> LlamaConfig:
    """Build the ``LlamaConfig`` of the Llama network equal to an InternLM2 ``config.json`` dict.

    ``rope_scaling`` (``{type: dynamic, factor}``; both networks use the same dynamic-NTK formula)
    becomes Llama's ``rope_parameters``. ``rope_theta`` is also set as a plain attribute, so saved
    configs carry it for loaders older than transformers 5 (which would otherwise use 10000).
    (Setting ``rope_scaling`` too would warn in transformers 5; exporters add it if they need it.)
    """
    theta = float(cfg_dict.get('rope_theta', 10000.0))
    scaling = cfg_dict.get('rope_scaling') or None
    rope_parameters = {'rope_type': 'default', 'rope_theta': theta}
    if scaling:
        rope_type = scaling.get('rope_type', scaling.get('type'))
        rope_parameters = {'rope_type': rope_type, 'factor': float(scaling['factor']), 'rope_theta': theta}
    config = LlamaConfig(
        vocab_size=cfg_dict['vocab_size'],
        hidden_size=cfg_dict['hidden_size'],
        intermediate_size=cfg_dict['intermediate_size'],
        num_hidden_layers=cfg_dict['num_hidden_layers'],
        num_attention_heads=cfg_dict['num_attention_heads'],
        num_key_value_heads=cfg_dict.get('num_key_value_heads', cfg_dict['num_attention_heads']),
        hidden_act=cfg_dict.get('hidden_act', 'silu'),
        max_position_embeddings=cfg_dict.get('max_position_embeddings', 2048),
        rms_norm_eps=cfg_dict.get('rms_norm_eps', 1e-6),
        bos_token_id=cfg_dict.get('bos_token_id', 1),
        eos_token_id=cfg_dict.get('eos_token_id', 2),
        pad_token_id=cfg_dict.get('pad_token_id'),
        tie_word_embeddings=cfg_dict.get('tie_word_embeddings', False),
        # InternLM2's `bias` covers wqkv and wo only, exactly Llama's `attention_bias`.
        attention_bias=cfg_dict.get('bias', False),
        mlp_bias=False,
        rope_parameters=rope_parameters,
        architectures=['LlamaForCausalLM'],
        # What `dtype='auto'` loads as; 4.x configs call it torch_dtype.
        dtype=cfg_dict.get('dtype', cfg_dict.get('torch_dtype')),
    )
    config.rope_theta = theta
    return config


_INTERNLM2_MODULES = re.compile(r'(^|\.)(' + '|'.join(re.escape(old) for old, _ in _RENAMES)
                                + r'|attention\.wqkv|output)\.')


def has_internlm2_names(key: str) -> bool:
    """Whether a state-dict key names an InternLM2 module (one :func:`internlm2_to_llama` renames)."""
    return bool(_INTERNLM2_MODULES.search(key))


def _head_layout(config: LlamaConfig | Mapping[str, Any]) -> tuple[int, int, int]:
    """(kv_heads, queries per kv head, head_dim) from a Llama config object or an InternLM2 dict."""
    get = config.get if isinstance(config, Mapping) else lambda key, default=None: getattr(config, key, default)
    heads = get('num_attention_heads')
    kv_heads = get('num_key_value_heads') or heads
    head_dim = get('head_dim') or get('hidden_size') // heads
    return kv_heads, heads // kv_heads, head_dim


def _rename(key: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        key = re.sub(rf'(^|\.){re.escape(old)}\.', rf'\g<1>{new}.', key)
    return key


def internlm2_to_llama(
    state_dict: Mapping[str, torch.Tensor], config: LlamaConfig | Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Rename an InternLM2 state dict to Llama names, splitting every ``wqkv`` into q/k/v (PEFT LoRA
    adapters on ``wqkv`` too, with adapter names: ``lora_A.default.weight``).

    Any key prefix is kept (``model.``, ``language_model.model.`` ...); ``output`` becomes ``lm_head``.
    ``config`` is the InternLM2 config dict or the converted ``LlamaConfig`` (same head fields).
    """
    kv_heads, groups, head_dim = _head_layout(config)
    out = {}
    for key, tensor in state_dict.items():
        if is_recomputed_buffer(key):  # old remote-code saves hold the rotary table; Llama recomputes it
            continue
        shared = _WQKV_LORA_A.match(key)
        if shared:
            prefix, kind = shared.groups()
            for name in ('q', 'k', 'v'):
                out[f'{_rename(prefix, _RENAMES)}self_attn.{name}_proj.{kind}'] = tensor.clone()
            continue
        packed = _WQKV.match(key)
        if packed:
            prefix, kind = packed.groups()
            prefix = _rename(prefix, _RENAMES)
            trailing = tensor.shape[1:]
            if tensor.shape[0] != kv_heads * (groups + 2) * head_dim:
                raise MMLLaVAError(f'{key} has shape {tuple(tensor.shape)}, the config needs '
                                   f'{kv_heads * (groups + 2) * head_dim} rows ({kv_heads} KV heads x '
                                   f'({groups} queries + key + value) x head_dim {head_dim})')
            parts = tensor.reshape(kv_heads, groups + 2, head_dim, *trailing)
            for name, part in (('q', parts[:, :groups]), ('k', parts[:, groups]), ('v', parts[:, groups + 1])):
                out[f'{prefix}self_attn.{name}_proj.{kind}'] = part.reshape(-1, *trailing).contiguous()
            continue
        out[_OUTPUT.sub(r'\1lm_head.\2', _rename(key, _RENAMES))] = tensor
    return out


def llama_to_internlm2(
    state_dict: Mapping[str, torch.Tensor], config: LlamaConfig | Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`internlm2_to_llama`: pack q/k/v into ``wqkv`` and restore InternLM2 names."""
    kv_heads, groups, head_dim = _head_layout(config)
    inverse = tuple((new, old) for old, new in _RENAMES)
    out = {}
    for key, tensor in state_dict.items():
        if re.search(r'self_attn\.[kv]_proj\.(weight|bias)$', key):
            continue  # packed together with q_proj below
        query = _Q_PROJ.match(key)
        if query:
            prefix, kind = query.groups()
            trailing = tensor.shape[1:]
            q = tensor.reshape(kv_heads, groups, head_dim, *trailing)
            k = state_dict[f'{prefix}self_attn.k_proj.{kind}'].reshape(kv_heads, 1, head_dim, *trailing)
            v = state_dict[f'{prefix}self_attn.v_proj.{kind}'].reshape(kv_heads, 1, head_dim, *trailing)
            packed = torch.cat([q, k, v], dim=1).reshape(-1, *trailing)
            out[f'{_rename(prefix, inverse)}attention.wqkv.{kind}'] = packed
            continue
        out[_LM_HEAD.sub(r'\1output.\2', _rename(key, inverse))] = tensor
    return out
