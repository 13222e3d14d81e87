"""Loaders: tokenizers equal to their reference implementation, dtypes, QLoRA, clear errors."""
from __future__ import annotations

import pytest
import torch
from tolerances import transformer_tolerance

from mmllava.errors import MMLLaVAError
from mmllava.pretrained import load_image_processor, load_llm, load_tokenizer, load_vision_encoder
from mmllava.tiny.tokenizers import INTERNLM2_SPECIALS, INTERNVL2_TOKENS, training_text

CHAT = ('<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n'
        'What color is the shape?<|im_end|>\n<|im_start|>assistant\nred circle<|im_end|>\n')


@pytest.mark.parametrize('name', ['internlm2_chat', 'internvl2_official'])
def test_internlm2_tokenizer_matches_sentencepiece(tiny_zoo, name):
    import sentencepiece as spm

    folder = tiny_zoo[name]
    reference = spm.SentencePieceProcessor(model_file=str(folder / 'tokenizer.model'))
    tokenizer = load_tokenizer(folder)
    texts = training_text()[:40:3] + [CHAT, '  two  spaces\tand ünïcödé 字 ', 'digits 12345']
    for text in texts:
        assert tokenizer(text)['input_ids'] == [reference.bos_id()] + reference.encode(text), text
        assert tokenizer.decode(tokenizer(text)['input_ids'][1:]) == text
    for special in INTERNLM2_SPECIALS:
        assert tokenizer(special, add_special_tokens=False)['input_ids'] == [reference.piece_to_id(special)]
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ('<s>', '</s>', '</s>')


def test_internvl2_added_tokens_follow_the_base_vocabulary(tiny_zoo):
    import sentencepiece as spm

    folder = tiny_zoo['internvl2_official']
    base = spm.SentencePieceProcessor(model_file=str(folder / 'tokenizer.model')).get_piece_size()
    tokenizer = load_tokenizer(folder)
    ids = tokenizer('<img><IMG_CONTEXT><IMG_CONTEXT></img>', add_special_tokens=False)['input_ids']
    assert ids == [base, base + 2, base + 2, base + 1]
    assert len(tokenizer) == base + len(INTERNVL2_TOKENS)


def test_chat_template_and_pad_tokens(tiny_zoo):
    message = [{'role': 'user', 'content': 'hi'}]
    internlm2 = load_tokenizer(tiny_zoo['internlm2_chat'])
    assert internlm2.apply_chat_template(message, tokenize=False, add_generation_prompt=True) == (
        '<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n')
    assert load_tokenizer(tiny_zoo['llama3_instruct']).pad_token == '<|reserved_special_token_0|>'
    qwen = load_tokenizer(tiny_zoo['qwen2_5_instruct'])
    assert (qwen.pad_token, qwen.eos_token, qwen.bos_token) == ('<|endoftext|>', '<|im_end|>', None)


def test_llm_families_and_dtypes(tiny_zoo):
    assert type(load_llm(tiny_zoo['llama3_instruct'])).__name__ == 'LlamaForCausalLM'
    assert type(load_llm(tiny_zoo['qwen2_5_instruct'], torch_dtype='auto')).__name__ == 'Qwen2ForCausalLM'
    internlm2 = tiny_zoo['internlm2_chat']
    assert load_llm(internlm2, torch_dtype='bfloat16').dtype == torch.bfloat16
    assert load_llm(internlm2, torch_dtype=torch.float16).dtype == torch.float16
    model = load_llm(internlm2, torch_dtype='auto', attn_implementation='sdpa')
    assert model.dtype == torch.float32 and model.config._attn_implementation == 'sdpa'
    assert model.generation_config.eos_token_id == [2, load_tokenizer(internlm2).convert_tokens_to_ids('<|im_end|>')]


def test_qlora_on_internlm2(tiny_zoo):
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=torch.float32)
    model = load_llm(tiny_zoo['internlm2_chat'], quantization_config=quantization)
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert isinstance(model.model.layers[1].mlp.down_proj, bnb.nn.Linear4bit)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj', 'down_proj'],
                                             task_type='CAUSAL_LM'))
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for name, p in model.named_parameters() if 'lora_' in name]
    assert torch.isfinite(loss) and grads and all(g is not None for g in grads)


def test_vision_encoder_from_full_clip(tiny_zoo):
    from transformers import CLIPModel

    folder = tiny_zoo['clip_vit']
    tower = load_vision_encoder(folder)
    assert type(tower).__name__ == 'CLIPVisionModel'
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
        expected = CLIPModel.from_pretrained(folder).vision_model(
            pixel_values=pixels, output_hidden_states=True).hidden_states[-2]
    assert features.shape == (2, 1 + 64, 64)
    # the same fp32 modules loaded twice: only a kernel's order of sums may differ (memory alignment
    # picks MKL's code path), through the 192-term patch embedding and 2 layers (256-wide MLP)
    atol = transformer_tolerance(torch.float32, 2, 256, expected.abs().max())
    torch.testing.assert_close(features, expected, rtol=0, atol=atol)
    assert load_vision_encoder(folder, torch_dtype='bfloat16').dtype == torch.bfloat16
    assert load_image_processor(folder).num_image_tokens == 64


@pytest.mark.parametrize('loader, what', [(load_llm, 'llm_name_or_path'), (load_tokenizer, 'tokenizer'),
                                          (load_vision_encoder, 'visual_encoder_name_or_path')])
def test_missing_path_is_one_clear_line(loader, what, tmp_path):
    missing = tmp_path / 'nope'
    with pytest.raises(MMLLaVAError) as info:
        loader(missing)
    assert str(info.value) == f'{what}: {missing} does not exist'


def test_invalid_folders_are_clear(tiny_zoo, tmp_path):
    with pytest.raises(MMLLaVAError, match=f'^llm_name_or_path: {tmp_path} has no config.json$'):
        load_llm(tmp_path)
    (tmp_path / 'config.json').write_text((tiny_zoo['internlm2_chat'] / 'config.json').read_text())
    with pytest.raises(MMLLaVAError, match='has no model weights'):
        load_llm(tmp_path)
    with pytest.raises(MMLLaVAError, match='expected a CLIP vision tower'):
        load_vision_encoder(tmp_path)
    with pytest.raises(MMLLaVAError, match='torch_dtype'):
        load_llm(tiny_zoo['internlm2_chat'], torch_dtype='float33')


def test_attention_defaults_to_flash_attention_2_only_where_it_can_run(monkeypatch):
    import importlib.util

    import torch

    from mmllava.pretrained.folder_reading import attention_kwargs

    bf16 = {'dtype': torch.bfloat16}
    assert attention_kwargs('eager', bf16) == {'attn_implementation': 'eager'}  # asked for: kept
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert attention_kwargs(None, bf16) == {}  # no GPU: transformers' SDPA
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: None if name == 'flash_attn' else find_spec(name, *a))
    assert attention_kwargs(None, bf16) == {}  # flash_attn not installed
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name, *a: object() if name == 'flash_attn' else find_spec(name, *a))
    assert attention_kwargs(None, bf16) == {'attn_implementation': 'flash_attention_2'}
    assert attention_kwargs(None, {'dtype': torch.float16}) == {'attn_implementation': 'flash_attention_2'}
    assert attention_kwargs(None, {'dtype': torch.float32}) == {}  # flash-attention needs half precision
    assert attention_kwargs(None, {}) == {}
