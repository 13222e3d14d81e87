"""convert merge: an LLM (InternLM2 via load_llm) or CLIP adapter merged into its base gives the
PEFT model's outputs; the merged folder is a plain model with tokenizer / image processor."""
from __future__ import annotations

import json

import torch
from peft import LoraConfig, get_peft_model

from tolerances import transformer_tolerance

from mmllava.cli import main


def test_merge_llm_adapter(tiny_zoo, tmp_path):
    from mmllava.pretrained import load_llm

    base = tiny_zoo['internlm2_chat']
    peft_model = get_peft_model(load_llm(base, torch_dtype=torch.float32),
                                LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, task_type='CAUSAL_LM',
                                           target_modules=['q_proj', 'v_proj', 'down_proj'])).eval()
    peft_model.save_pretrained(tmp_path / 'adapter')
    assert main(['convert', 'merge', str(base), str(tmp_path / 'adapter'), str(tmp_path / 'merged')]) == 0

    merged = load_llm(tmp_path / 'merged').eval()
    ids = torch.tensor([[1, 5, 9, 42, 7, 100]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        # fp32 merge (one rounding per weight) and the order of the sums, through 2 layers
        # (128-wide MLP) and the head
        atol = transformer_tolerance(torch.float32, 2, 128, expected.abs().max())
        with peft_model.disable_adapter():
            assert (expected - peft_model(input_ids=ids).logits).abs().max() > 10 * atol  # the LoRA matters
        got = merged(input_ids=ids).logits
    assert (got - expected).abs().max() < atol
    config = json.loads((tmp_path / 'merged' / 'config.json').read_text())
    assert config['architectures'] == ['LlamaForCausalLM'] and config['rope_theta'] == 1e6
    assert (tmp_path / 'merged' / 'tokenizer.json').is_file()


def test_merge_clip_adapter(tiny_zoo, tmp_path):
    from mmllava.pretrained import load_vision_encoder

    base = tiny_zoo['clip_vit']
    peft_model = get_peft_model(load_vision_encoder(base), LoraConfig(
        r=4, lora_alpha=8, init_lora_weights=False, target_modules=['q_proj', 'fc1'])).eval()
    peft_model.save_pretrained(tmp_path / 'adapter')
    assert main(['convert', 'merge', str(base), str(tmp_path / 'adapter'), str(tmp_path / 'merged'),
                 '--is-clip', '--fp32']) == 0

    merged = load_vision_encoder(tmp_path / 'merged').eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got, expected = merged(pixels).last_hidden_state, peft_model(pixels).last_hidden_state
        # fp32 merge and the order of the sums through CLIP's 3 layers (256-wide MLP), patch embedding first
        atol = transformer_tolerance(torch.float32, 3, 256, expected.abs().max())
        with peft_model.disable_adapter():
            assert (expected - peft_model(pixels).last_hidden_state).abs().max() > 10 * atol  # the LoRA matters
    assert (got - expected).abs().max() < atol
    assert (tmp_path / 'merged' / 'preprocessor_config.json').is_file()


def test_merge_rejects_a_folder_without_adapter(tiny_zoo, tmp_path, capsys):
    assert main(['convert', 'merge', str(tiny_zoo['clip_vit']), str(tmp_path), str(tmp_path / 'out')]) == 1
    assert capsys.readouterr().err == (f'mmllava convert: error: {tmp_path}: not a PEFT adapter folder '
                                       '(no adapter_config.json)\n')
