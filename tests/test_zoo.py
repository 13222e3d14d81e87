"""The tiny zoo: deterministic, in the real layouts, loadable by transformers' own classes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mmllava.tiny.tokenizers import INTERNVL2_TOKENS
from mmllava.tiny.zoo import ZOO_NAMES, build_tiny_zoo

REPO = Path(__file__).resolve().parent.parent
MESSAGES = [{'role': 'system', 'content': 'You are a helpful assistant.'},
            {'role': 'user', 'content': 'What color is the shape?'}, {'role': 'assistant', 'content': 'red'}]


def _config(folder: Path, name: str = 'config.json') -> dict:
    return json.loads((folder / name).read_text())


def _keys(folder: Path) -> set[str]:
    with safe_open(str(folder / 'model.safetensors'), framework='pt') as f:
        return set(f.keys())


def test_same_seed_same_bytes_other_seed_other_weights(tiny_zoo, tmp_path):
    again = build_tiny_zoo(tmp_path / 'again', seed=0)
    assert sorted(again) == sorted(ZOO_NAMES)
    for name, folder in again.items():
        files = sorted(p.name for p in folder.iterdir())
        # the cache's completion marker (mmllava.tiny.cache) is not part of a model folder
        assert files == sorted(p.name for p in tiny_zoo[name].iterdir() if p.name != '.complete')
        for file in files:
            assert (folder / file).read_bytes() == (tiny_zoo[name] / file).read_bytes(), (name, file)
        assert (folder / 'model.safetensors').stat().st_size < 4 * 2**20
    other = build_tiny_zoo(tmp_path / 'other', seed=1, names=['internlm2_chat'])['internlm2_chat']
    assert (other / 'model.safetensors').read_bytes() != (tiny_zoo['internlm2_chat'] / 'model.safetensors').read_bytes()
    assert (other / 'tokenizer.model').read_bytes() == (tiny_zoo['internlm2_chat'] / 'tokenizer.model').read_bytes()


def test_internlm2_layout(tiny_zoo):
    folder = tiny_zoo['internlm2_chat']
    cfg = _config(folder)
    assert (cfg['model_type'], cfg['architectures']) == ('internlm2', ['InternLM2ForCausalLM'])
    assert cfg['auto_map']['AutoModelForCausalLM'] == 'modeling_internlm2.InternLM2ForCausalLM'
    assert cfg['rope_scaling'] == {'type': 'dynamic', 'factor': 2.0} and cfg['rope_theta'] == 1000000
    assert cfg['num_key_value_heads'] < cfg['num_attention_heads'] and cfg['bias'] is False
    head_dim = cfg['hidden_size'] // cfg['num_attention_heads']
    with safe_open(str(folder / 'model.safetensors'), framework='pt') as f:
        wqkv = f.get_slice('model.layers.1.attention.wqkv.weight').get_shape()
        assert 'output.weight' in f.keys() and 'model.tok_embeddings.weight' in f.keys()
    assert wqkv == [(cfg['num_attention_heads'] + 2 * cfg['num_key_value_heads']) * head_dim, cfg['hidden_size']]
    tok_cfg = _config(folder, 'tokenizer_config.json')
    assert tok_cfg['tokenizer_class'] == 'InternLM2Tokenizer' and 'chat_template' in tok_cfg
    assert tok_cfg['auto_map']['AutoTokenizer'][0] == 'tokenization_internlm2.InternLM2Tokenizer'
    assert _config(folder, 'special_tokens_map.json')['additional_special_tokens'][:2] == ['<|im_start|>', '<|im_end|>']


def test_internvl2_official_layout(tiny_zoo):
    import sentencepiece as spm

    folder = tiny_zoo['internvl2_official']
    cfg = _config(folder)
    assert cfg['architectures'] == ['InternVLChatModel'] and 'AutoModel' in cfg['auto_map']
    expected = {'select_layer': -1, 'downsample_ratio': 0.5, 'ps_version': 'v2', 'template': 'internlm2-chat',
                'dynamic_image_size': True, 'use_thumbnail': True, 'min_dynamic_patch': 1, 'max_dynamic_patch': 6,
                'force_image_size': 56}
    assert {k: cfg[k] for k in expected} == expected
    vision, llm = cfg['vision_config'], cfg['llm_config']
    assert (vision['image_size'], vision['patch_size'], vision['qkv_bias']) == (56, 7, True)
    assert llm['architectures'] == ['InternLM2ForCausalLM']
    base = spm.SentencePieceProcessor(model_file=str(folder / 'tokenizer.model')).get_piece_size()
    added = _config(folder, 'tokenizer_config.json')['added_tokens_decoder']
    assert [added[str(base + i)]['content'] for i in range(3)] == ['<img>', '</img>', '<IMG_CONTEXT>']
    assert llm['vocab_size'] == base + len(INTERNVL2_TOKENS)
    keys = _keys(folder)
    for part in ('attn.qkv.weight', 'attn.qkv.bias', 'attn.proj.weight', 'ls1', 'ls2', 'norm1.weight',
                 'norm2.bias', 'mlp.fc1.weight', 'mlp.fc2.bias'):
        assert f'vision_model.encoder.layers.1.{part}' in keys
    for key in ('vision_model.embeddings.class_embedding', 'vision_model.embeddings.patch_embedding.weight',
                'vision_model.embeddings.position_embedding', 'mlp1.0.weight', 'mlp1.1.weight', 'mlp1.3.bias',
                'language_model.model.layers.0.attention.wqkv.weight', 'language_model.output.weight'):
        assert key in keys
    with safe_open(str(folder / 'model.safetensors'), framework='pt') as f:
        assert f.get_slice('vision_model.embeddings.position_embedding').get_shape() == [1, 65, 32]
        assert f.get_slice('mlp1.1.weight').get_shape() == [llm['hidden_size'], 4 * vision['hidden_size']]


def test_native_models_load_with_transformers(tiny_zoo):
    from transformers import AutoModelForCausalLM, CLIPImageProcessor, CLIPModel

    for name in ('llama3_instruct', 'qwen2_5_instruct'):
        model, info = AutoModelForCausalLM.from_pretrained(tiny_zoo[name], output_loading_info=True)
        assert not info['missing_keys'] and not info['unexpected_keys'], name
    llama = AutoModelForCausalLM.from_pretrained(tiny_zoo['llama3_instruct'])
    assert llama.config.rope_parameters['rope_theta'] == 500000.0
    assert llama.config.num_key_value_heads < llama.config.num_attention_heads
    assert model.config.tie_word_embeddings and model.model.layers[0].self_attn.q_proj.bias is not None
    clip, info = CLIPModel.from_pretrained(tiny_zoo['clip_vit'], output_loading_info=True)
    assert not info['missing_keys'] and clip.config.vision_config.hidden_act == 'quick_gelu'
    processor = CLIPImageProcessor.from_pretrained(tiny_zoo['clip_vit'])
    assert processor.crop_size == {'height': 64, 'width': 64} and processor.resample == 3


def test_llama3_and_qwen_tokenizers_load_with_transformers(tiny_zoo):
    from transformers import AutoTokenizer

    llama = AutoTokenizer.from_pretrained(tiny_zoo['llama3_instruct'])
    for special in ('<|begin_of_text|>', '<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'):
        assert len(llama(special, add_special_tokens=False)['input_ids']) == 1
    assert llama('red')['input_ids'][0] == llama.convert_tokens_to_ids('<|begin_of_text|>')
    assert (llama.bos_token, llama.eos_token) == ('<|begin_of_text|>', '<|eot_id|>')
    text = llama.apply_chat_template(MESSAGES, tokenize=False)
    assert text.startswith('<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are')
    assert text.endswith('<|start_header_id|>assistant<|end_header_id|>\n\nred<|eot_id|>')

    qwen = AutoTokenizer.from_pretrained(tiny_zoo['qwen2_5_instruct'])
    for special in ('<|im_start|>', '<|im_end|>', '<|endoftext|>'):
        assert len(qwen(special, add_special_tokens=False)['input_ids']) == 1
    assert qwen('red')['input_ids'] == qwen('red', add_special_tokens=False)['input_ids']  # no BOS
    text = qwen.apply_chat_template(MESSAGES[1:], tokenize=False, add_generation_prompt=True)
    assert text.startswith('<|im_start|>system\nYou are Qwen') and text.endswith('<|im_start|>assistant\n')
    assert _config(tiny_zoo['qwen2_5_instruct'])['vocab_size'] >= len(qwen)


def test_cli_builds_from_another_directory(tmp_path):
    out = tmp_path / 'zoo'
    result = subprocess.run([sys.executable, str(REPO / 'tools' / 'make_tiny_zoo.py'), str(out), '--seed', '3',
                             '--names', 'internlm2_chat'], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f'internlm2_chat: {out / "internlm2_chat"}'
    assert {p.name for p in (out / 'internlm2_chat').iterdir()} == {
        'config.json', 'generation_config.json', 'model.safetensors', 'special_tokens_map.json', 'tokenizer.model',
        'tokenizer_config.json'}


def test_unknown_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match='unknown tiny model'):
        build_tiny_zoo(tmp_path, names=['gpt5'])
    assert not any(tmp_path.iterdir())


def test_weights_are_float32_and_scales_are_not_trivial(tiny_zoo):
    with safe_open(str(tiny_zoo['internlm2_chat'] / 'model.safetensors'), framework='pt') as f:
        norm = f.get_tensor('model.layers.0.attention_norm.weight')
        assert norm.dtype == torch.float32 and not torch.allclose(norm, torch.ones_like(norm))
