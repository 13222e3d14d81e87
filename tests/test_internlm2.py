"""InternLM2 -> Llama conversion, checked against a forward pass written from the packed layout."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig

from mmllava.pretrained import load_llm
from tolerances import transformer_tolerance
from mmllava.formats.internlm2 import internlm2_config_to_llama, internlm2_to_llama, llama_to_internlm2


def _rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rotate(x, theta):
    """Rotary embedding on ``[B, heads, T, d]`` (halves rotated, as InternLM2's ``rotate_half``)."""
    d, length = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    cos, sin = torch.cat([angles.cos()] * 2, -1).float(), torch.cat([angles.sin()] * 2, -1).float()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def reference_forward(sd: dict, cfg: dict, ids: torch.Tensor, theta: float | None = None) -> torch.Tensor:
    """Logits of InternLM2 computed directly from its own weight names and packed ``wqkv``."""
    theta = cfg['rope_theta'] if theta is None else theta
    heads, kv_heads, eps = cfg['num_attention_heads'], cfg['num_key_value_heads'], cfg['rms_norm_eps']
    groups, head_dim = heads // kv_heads, cfg['hidden_size'] // heads
    batch, length = ids.shape
    causal = torch.full((length, length), float('-inf')).triu(1)
    h = sd['model.tok_embeddings.weight'][ids]
    for i in range(cfg['num_hidden_layers']):
        p = f'model.layers.{i}.'
        x = _rms_norm(h, sd[p + 'attention_norm.weight'], eps)
        qkv = (x @ sd[p + 'attention.wqkv.weight'].T).view(batch, length, kv_heads, groups + 2, head_dim)
        q = qkv[..., :groups, :].reshape(batch, length, heads, head_dim).transpose(1, 2)
        k = qkv[..., groups, :].repeat_interleave(groups, dim=2).transpose(1, 2)
        v = qkv[..., groups + 1, :].repeat_interleave(groups, dim=2).transpose(1, 2)
        q, k = _rotate(q, theta), _rotate(k, theta)
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim) + causal, dim=-1) @ v
        h = h + attn.transpose(1, 2).reshape(batch, length, -1) @ sd[p + 'attention.wo.weight'].T
        x = _rms_norm(h, sd[p + 'ffn_norm.weight'], eps)
        gate, up = x @ sd[p + 'feed_forward.w1.weight'].T, x @ sd[p + 'feed_forward.w3.weight'].T
        h = h + (torch.nn.functional.silu(gate) * up) @ sd[p + 'feed_forward.w2.weight'].T
    return _rms_norm(h, sd['model.norm.weight'], eps) @ sd['output.weight'].T


@pytest.fixture(scope='module')
def sharp_internlm2(tiny_zoo, tmp_path_factory):
    """The tiny InternLM2 with attention weights scaled up (so rotary and head order visibly matter),
    saved as two safetensors shards with an index, as large real checkpoints are."""
    folder = tmp_path_factory.mktemp('internlm2_sharded')
    for item in tiny_zoo['internlm2_chat'].iterdir():
        if item.name != 'model.safetensors':
            shutil.copy(item, folder)
    sd = load_file(tiny_zoo['internlm2_chat'] / 'model.safetensors')
    sd = {k: v * 8 if 'wqkv' in k else v for k, v in sd.items()}
    keys = sorted(sd)
    shards = {'model-00001-of-00002.safetensors': keys[::2], 'model-00002-of-00002.safetensors': keys[1::2]}
    for name, shard_keys in shards.items():
        save_file({k: sd[k] for k in shard_keys}, str(folder / name), metadata={'format': 'pt'})
    index = {'metadata': {}, 'weight_map': {k: name for name, ks in shards.items() for k in ks}}
    (folder / 'model.safetensors.index.json').write_text(json.dumps(index))
    return folder, sd, json.loads((folder / 'config.json').read_text())


def _logits_tolerance(cfg, expected) -> float:
    # fp32, only the order of the sums differs from transformers' Llama (the MLP's 128-wide ones the
    # longest) through 2 layers and the head; measured 1.0e-5 on AVX512-BF16 (1 or 2 threads), bound 2.4e-4.
    return transformer_tolerance(torch.float32, cfg['num_hidden_layers'], cfg['intermediate_size'],
                                 expected.abs().max())


def test_logits_match_reference_forward(sharp_internlm2):
    folder, sd, cfg = sharp_internlm2
    ids = torch.randint(0, cfg['vocab_size'], (2, 12))
    expected = reference_forward(sd, cfg, ids)
    model = load_llm(folder)
    assert type(model).__name__ == 'LlamaForCausalLM'
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    atol = _logits_tolerance(cfg, expected)
    torch.testing.assert_close(logits, expected, atol=atol, rtol=0)
    # The comparison can tell a wrong rotary base apart (so it checks rope_theta is carried over).
    assert (reference_forward(sd, cfg, ids, theta=10000.0) - expected).abs().max() > 100 * atol


def test_pytorch_bin_checkpoint_loads_the_same(sharp_internlm2, tmp_path):
    folder, sd, cfg = sharp_internlm2
    for name in ('config.json', 'generation_config.json'):
        shutil.copy(folder / name, tmp_path)
    torch.save(sd, tmp_path / 'pytorch_model.bin')
    ids = torch.randint(0, cfg['vocab_size'], (1, 7))
    with torch.no_grad():
        logits = load_llm(tmp_path).forward(input_ids=ids).logits
    expected = reference_forward(sd, cfg, ids)
    torch.testing.assert_close(logits, expected, atol=_logits_tolerance(cfg, expected), rtol=0)


def test_round_trip_is_exact(tiny_zoo):
    cfg = json.loads((tiny_zoo['internlm2_chat'] / 'config.json').read_text())
    sd = load_file(tiny_zoo['internlm2_chat'] / 'model.safetensors')
    llama = internlm2_to_llama(sd, cfg)
    assert {k for k in llama if '.layers.0.' in k} == {
        f'model.layers.0.{name}.weight' for name in (
            'self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj',
            'mlp.up_proj', 'mlp.down_proj', 'input_layernorm', 'post_attention_layernorm')}
    assert llama['model.layers.0.self_attn.k_proj.weight'].shape == (2 * 16, 64)
    back = llama_to_internlm2(llama, internlm2_config_to_llama(cfg))
    assert back.keys() == sd.keys()
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_round_trip_keeps_prefixes_and_other_weights(tiny_zoo):
    """InternVL2's LLM lives under ``language_model.``; vision and projector keys pass through."""
    cfg = json.loads((tiny_zoo['internvl2_official'] / 'config.json').read_text())['llm_config']
    sd = load_file(tiny_zoo['internvl2_official'] / 'model.safetensors')
    llama = internlm2_to_llama(sd, cfg)
    assert 'language_model.lm_head.weight' in llama and 'language_model.model.embed_tokens.weight' in llama
    assert 'vision_model.encoder.layers.0.attn.qkv.weight' in llama and 'mlp1.3.bias' in llama
    back = llama_to_internlm2(llama, cfg)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_config_conversion_keeps_rope_and_heads(tiny_zoo, tmp_path):
    cfg = json.loads((tiny_zoo['internlm2_chat'] / 'config.json').read_text())
    config = internlm2_config_to_llama(cfg)
    assert config.rope_parameters == {'rope_type': 'dynamic', 'factor': 2.0, 'rope_theta': 1e6}
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert (config.vocab_size, config.tie_word_embeddings, config.attention_bias) == (cfg['vocab_size'], False, False)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / 'config.json').read_text())
    assert saved['rope_theta'] == 1e6  # older loaders read only this key
    assert LlamaConfig.from_pretrained(tmp_path).rope_parameters == config.rope_parameters
