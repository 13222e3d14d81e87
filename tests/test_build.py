"""mmllava build (the Qwen2.5-3B LLaVA built from scratch): an untrained LLaVA folder from Qwen2.5 + CLIP that transformers loads,
with a single-token <image>, the LLM's pad token, both processor files, and a projector that
training (the huggingface key style of ``pretrained_pth``) and chat can read."""
from __future__ import annotations

import json

import torch
from llava_checkpoints import sample_image

from mmllava.cli import main


def test_build_qwen_clip(tiny_zoo, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmllava.chat.loader import load_chat_model
    from mmllava.chat.session import ChatSession, GenerationSettings
    from mmllava.formats.llava_projector import read_hf_llava_projector, split_projector_state

    out = tmp_path / 'built'
    assert main(['build', '--llm', str(tiny_zoo['qwen2_5_instruct']), '--visual-encoder', str(tiny_zoo['clip_vit']),
                 str(out), '--torch-dtype', 'float32']) == 0
    model = LlavaForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    tokenizer = processor.tokenizer
    assert tokenizer.encode('<image>', add_special_tokens=False) == [model.config.image_token_index]
    assert tokenizer.pad_token == '<|endoftext|>'
    assert model.config.text_config.pad_token_id == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids(
        '<|endoftext|>')
    assert model.config.image_token_index < model.config.text_config.vocab_size == 512  # Qwen's spare rows
    assert (out / 'preprocessor_config.json').is_file() and (out / 'processor_config.json').is_file()
    enc = processor(text='<|im_start|>user\n<image>\nhi<|im_end|>\n', images=sample_image(), return_tensors='pt')
    assert int((enc['input_ids'] == model.config.image_token_index).sum()) == 64
    with torch.no_grad():
        assert torch.isfinite(model(**enc).logits).all()

    state = read_hf_llava_projector(out)
    projector, rest, style = split_projector_state(state)
    assert style == 'huggingface' and not rest
    assert sorted(projector) == ['projector.0.bias', 'projector.0.weight', 'projector.2.bias', 'projector.2.weight']
    assert torch.equal(projector['projector.2.weight'], model.model.multi_modal_projector.linear_2.weight)

    config = json.loads((out / 'config.json').read_text())
    assert config['prompt_template'] == 'qwen_chat'  # guessed from the tokenizer
    session = ChatSession(load_chat_model(out), settings=GenerationSettings(max_new_tokens=3))
    assert isinstance(session.ask('hi', image=sample_image()), str)
