"""convert pth_to_hf: huggingface exports reproduce the training model's logits (LoRA and QLoRA),
the xtuner and official layouts, checkpoint sources, and one-line errors."""
from __future__ import annotations

import json

import pytest
import torch
from llava_checkpoints import FINETUNE, PRETRAIN, cfg_options, make_checkpoint, sample_image
from safetensors import safe_open
from tolerances import rounding_tolerance, transformer_tolerance

from mmllava.cli import main
from mmllava.constants import IMAGE_TOKEN_INDEX



def logits_tolerance(expected) -> float:
    """fp32 export vs the training model (QLoRA: the export holds the very weights bitsandbytes
    dequantises, LoRA merged in fp32): only the order of the sums differs, through CLIP's first
    2 layers (256-wide MLP), the 2-Linear projector, the LLM's 2 layers and the head. Measured
    ~1e-6 on AVX512-BF16; bound ~1e-3; a wrong weight moves logits by 1e-2 or more."""
    return transformer_tolerance(torch.float32, layers=2 + 2, width=256, magnitude=expected.abs().max(),
                                 extra=2 + 1)


def convert(config, checkpoint, out, zoo, *extra, qlora=True):
    return main(['convert', 'pth_to_hf', config, str(checkpoint), str(out), *extra,
                 '--cfg-options', *cfg_options(zoo, qlora)])


def weight_keys(folder) -> set[str]:
    keys = set()
    for file in folder.glob('*.safetensors'):
        with safe_open(str(file), framework='pt') as f:
            keys.update(f.keys())
    return keys


@pytest.mark.parametrize('qlora', [False, True], ids=['lora', 'qlora'])
def test_huggingface_export_matches_training_logits(tiny_zoo, tmp_path, qlora):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from mmllava.pretrained import load_image_processor, load_tokenizer

    model = make_checkpoint(tiny_zoo, tmp_path / 'iter_5.pth', qlora=qlora)
    layer = model.llm.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == ('Linear4bit' if qlora else 'Linear')
    out = tmp_path / 'hf'
    assert convert(FINETUNE, tmp_path / 'iter_5.pth', out, tiny_zoo, '--save-format', 'huggingface', '--fp32',
                   qlora=qlora) == 0

    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    image = sample_image()
    # The same prompt through the exported processor and through our training-side path.
    text = '<s><|im_start|>user\n<image>\nWhat colour is the circle?<|im_end|>\n<|im_start|>assistant\n'
    enc = processor(text=text, images=image, return_tensors='pt', add_special_tokens=False)
    image_id = hf.config.image_token_index
    assert int((enc['input_ids'] == image_id).sum()) == 64 == hf.config.image_seq_length  # (64 / 8)^2
    tokenizer = load_tokenizer(tiny_zoo['internlm2_chat'])
    ours = [tokenizer.bos_token_id] + tokenizer.encode(text.removeprefix('<s>').split('<image>')[0],
                                                       add_special_tokens=False) + [IMAGE_TOKEN_INDEX] * 64 + \
        tokenizer.encode(text.split('<image>')[1], add_special_tokens=False)
    ours = torch.tensor([ours])
    assert torch.equal(enc['input_ids'], ours.masked_fill(ours == IMAGE_TOKEN_INDEX, image_id))
    pixel_values = load_image_processor(tiny_zoo['clip_vit'])(image)[None]
    # Both resize the same uint8 image with PIL, then rescale and normalise: 3 fp32 element-wise
    # operations (a float-vs-uint8 resize would differ by ~1/255/std = 0.015).
    torch.testing.assert_close(enc['pixel_values'], pixel_values, rtol=0,
                               atol=rounding_tolerance(torch.float32, 1, pixel_values.abs().max(), sequential=3))

    with torch.no_grad():
        expected = model({'input_ids': ours, 'pixel_values': pixel_values}, mode='tensor')
        got = hf(**enc).logits
    vocab = expected.shape[-1]
    assert got.shape[-1] == vocab + 1  # <image> appended to the 600-token vocabulary
    assert (got[..., :vocab] - expected).abs().max() < logits_tolerance(expected)
    assert expected.std() > 0.1  # the comparison is not between near-constant tensors


def test_huggingface_export_files(tiny_zoo, tmp_path):
    make_checkpoint(tiny_zoo, tmp_path / 'iter_5.pth', qlora=False)
    out = tmp_path / 'hf'
    assert convert(FINETUNE, tmp_path / 'iter_5.pth', out, tiny_zoo, '--save-format', 'huggingface',
                   '--max-shard-size', '100KB', qlora=False) == 0
    config = json.loads((out / 'config.json').read_text())
    assert config['vision_feature_layer'] == -2 and config['vision_feature_select_strategy'] == 'default'
    assert config['projector_hidden_act'] == 'gelu' and config['image_seq_length'] == 64
    assert config['prompt_template'] == 'internlm2_chat'
    assert config['torch_dtype'] == config['dtype'] == 'bfloat16'  # default: bf16
    text = config['text_config']
    assert text['rope_theta'] == 1e6 and text['rope_scaling'] == {'type': 'dynamic', 'rope_type': 'dynamic',
                                                                  'factor': 2.0}
    assert text['torch_dtype'] == 'bfloat16' and 'quantization_config' not in text
    assert config['image_token_index'] == text['vocab_size'] - 1 == 600
    index = json.loads((out / 'model.safetensors.index.json').read_text())
    assert len(set(index['weight_map'].values())) > 1  # sharded at 100 KB
    keys = weight_keys(out)
    assert keys == set(index['weight_map'])
    assert 'vision_tower.vision_model.embeddings.patch_embedding.weight' in keys
    assert {'multi_modal_projector.linear_1.weight', 'multi_modal_projector.linear_2.bias',
            'language_model.lm_head.weight', 'language_model.model.embed_tokens.weight'} <= keys
    assert not any(k.startswith(('model.', 'vision_tower.embeddings', 'lm_head')) or 'lora' in k for k in keys)
    processor = json.loads((out / 'processor_config.json').read_text())
    assert processor['patch_size'] == 8 and processor['num_additional_image_tokens'] == 1
    assert processor['vision_feature_select_strategy'] == 'default' and processor['image_token'] == '<image>'
    preprocessor = json.loads((out / 'preprocessor_config.json').read_text())
    assert preprocessor['crop_size'] == {'height': 64, 'width': 64}
    tok_cfg = json.loads((out / 'tokenizer_config.json').read_text())
    assert tok_cfg['tokenizer_class'] == 'PreTrainedTokenizerFast' and '<image>' in tok_cfg['chat_template']
    assert 'auto_map' not in tok_cfg
    generation = json.loads((out / 'generation_config.json').read_text())
    assert generation['eos_token_id'] == [2, 598]  # </s> and <|im_end|>


def test_xtuner_layout(tiny_zoo, tmp_path):
    from peft import PeftConfig

    model = make_checkpoint(tiny_zoo, tmp_path / 'iter_5.pth')
    out = tmp_path / 'xtuner'
    assert convert(FINETUNE, tmp_path / 'iter_5.pth', out, tiny_zoo) == 0
    assert sorted(p.name for p in out.iterdir()) == ['llm_adapter', 'projector', 'visual_encoder_adapter',
                                                     'xtuner_config.py']
    projector = json.loads((out / 'projector' / 'config.json').read_text())
    assert {k: projector[k] for k in ('visual_hidden_size', 'llm_hidden_size', 'depth', 'hidden_act', 'bias')} == {
        'visual_hidden_size': 64, 'llm_hidden_size': 64, 'depth': 2, 'hidden_act': 'gelu', 'bias': True}
    with safe_open(str(out / 'projector' / 'model.safetensors'), framework='pt') as f:
        assert sorted(f.keys()) == ['model.0.bias', 'model.0.weight', 'model.2.bias', 'model.2.weight']
        assert torch.equal(f.get_tensor('model.2.weight').float(), model.projector[2].weight.bfloat16().float())
    for name in ('llm_adapter', 'visual_encoder_adapter'):
        assert (out / name / 'adapter_model.safetensors').is_file()
        assert PeftConfig.from_pretrained(out / name).peft_type == 'LORA'
    assert "prompt_template = 'internlm2_chat'" in (out / 'xtuner_config.py').read_text()


def test_official_layout(tiny_zoo, tmp_path):
    make_checkpoint(tiny_zoo, tmp_path / 'iter_5.pth', qlora=False)
    out = tmp_path / 'official'
    assert convert(FINETUNE, tmp_path / 'iter_5.pth', out, tiny_zoo, '--save-format', 'official', qlora=False) == 0
    config = json.loads((out / 'config.json').read_text())
    assert config['architectures'] == ['LlavaLlamaForCausalLM'] and config['model_type'] == 'llava_llama'
    expected = {'mm_hidden_size': 64, 'mm_projector_type': 'mlp2x_gelu', 'mm_vision_select_layer': -2,
                'mm_vision_select_feature': 'patch', 'mm_use_im_start_end': False, 'mm_use_im_patch_token': False,
                'image_aspect_ratio': 'square', 'rope_theta': 1e6, 'torch_dtype': 'bfloat16'}
    assert {k: config[k] for k in expected} == expected
    # The vision tower had LoRA: its merged copy is saved and referenced.
    assert config['mm_vision_tower'] == str((out / 'visual_encoder').resolve())
    assert 'vision_model.embeddings.patch_embedding.weight' in weight_keys(out / 'visual_encoder')
    keys = weight_keys(out)
    assert {'model.mm_projector.0.weight', 'model.mm_projector.2.bias', 'lm_head.weight',
            'model.embed_tokens.weight', 'model.layers.1.self_attn.q_proj.weight'} <= keys
    assert not any('lora' in k or k.startswith(('language_model', 'vision_tower')) for k in keys)


@pytest.mark.parametrize('source', ['work_dir', 'deepspeed_folder', 'xtuner_pretrain_pth'])
def test_checkpoint_sources(tiny_zoo, tmp_path, source):
    """Work dir (last checkpoint), DeepSpeed folder, and the LLaVA-InternLM2 QLoRA tutorial's input: the *pretrain* config name with
    XTuner's projector-only iter_2181.pth (``projector.model.N`` keys)."""
    model = make_checkpoint(tiny_zoo, tmp_path / 'made' / 'iter_5.pth', config=PRETRAIN)
    state = model.state_dict()
    if source == 'work_dir':
        checkpoint = tmp_path / 'made'
        (checkpoint / 'last_checkpoint').write_text(str(checkpoint / 'iter_5.pth'))
    elif source == 'deepspeed_folder':
        checkpoint = tmp_path / 'iter_5.pth'
        (checkpoint / 'checkpoint').mkdir(parents=True)
        torch.save({'module': state}, checkpoint / 'checkpoint' / 'mp_rank_00_model_states.pt')
    else:
        checkpoint = tmp_path / 'iter_2181.pth'
        torch.save({'state_dict': {k.replace('projector.', 'projector.model.'): v for k, v in state.items()}},
                   checkpoint)
    out = tmp_path / 'out'
    assert convert(PRETRAIN, checkpoint, out, tiny_zoo, '--fp32') == 0
    assert sorted(p.name for p in out.iterdir()) == ['projector', 'xtuner_config.py']
    with safe_open(str(out / 'projector' / 'model.safetensors'), framework='pt') as f:
        assert torch.equal(f.get_tensor('model.0.weight'), state['projector.0.weight'])


def test_inner_deepspeed_file_is_a_clear_error(tiny_zoo, tmp_path, capsys):
    inner = tmp_path / 'iter_1200.pth' / 'mp_rank_00_model_states.pt'
    inner.parent.mkdir()
    torch.save({'module': {}}, inner)
    assert convert(FINETUNE, inner, tmp_path / 'out', tiny_zoo) == 1
    assert capsys.readouterr().err == (
        f'mmllava convert: error: {inner} is one file of a DeepSpeed checkpoint; pass the checkpoint folder '
        f'that holds it instead: {tmp_path / "iter_1200.pth"}\n')
    assert not (tmp_path / 'out').exists()


def test_missing_checkpoint_is_a_clear_error(tiny_zoo, tmp_path, capsys):
    assert convert(FINETUNE, tmp_path / 'iter_9.pth', tmp_path / 'out', tiny_zoo) == 1
    assert capsys.readouterr().err == f'mmllava convert: error: checkpoint not found: {tmp_path / "iter_9.pth"}\n'


def test_a_missing_model_folder_names_the_config_variable_to_change(tiny_zoo, tmp_path, capsys):
    torch.save({'state_dict': {}}, tmp_path / 'iter_1.pth')
    code = main(['convert', 'pth_to_hf', PRETRAIN, str(tmp_path / 'iter_1.pth'), str(tmp_path / 'out'),
                 '--cfg-options', *cfg_options(tiny_zoo), 'llm_name_or_path=/nonexistent/llm'])
    assert code == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        'mmllava convert: error: llm_name_or_path: /nonexistent/llm does not exist (set --cfg-options '
        f'llm_name_or_path=..., or edit llm_name_or_path in a copy: mmllava copy-cfg {PRETRAIN} .)')


def test_checkpoint_of_another_model_is_a_clear_error(tiny_zoo, tmp_path, capsys):
    torch.save({'state_dict': {'projector.0.weight': torch.zeros(3, 3)}}, tmp_path / 'iter_1.pth')
    assert convert(PRETRAIN, tmp_path / 'iter_1.pth', tmp_path / 'out', tiny_zoo) == 1
    last = capsys.readouterr().err.splitlines()[-1]  # after transformers' loading progress bars
    assert last == (f'mmllava convert: error: checkpoint: {tmp_path / "iter_1.pth"}: 3 of 4 trained weights missing '
                    '(projector.0.bias, projector.2.bias, projector.2.weight); 1 trained weights of the wrong shape '
                    '(projector.0.weight: (3, 3) in the file, the model expects (64, 64))')


def _xtuner_lora_checkpoint(path, model, rank: int):
    """What XTuner's LLaVAModel saves for an InternLM2 LoRA run: PEFT keys without the adapter
    name, InternLM2 module names (packed ``wqkv``), the projector as ``projector.model.*``; every
    adapted module of every layer (a complete checkpoint: loading is strict)."""
    gen = torch.Generator().manual_seed(3)
    config = model.llm.config
    hidden, head_dim = config.hidden_size, config.head_dim
    rows = (config.num_attention_heads + 2 * config.num_key_value_heads) * head_dim
    ffn = config.intermediate_size
    modules = {'attention.wqkv': (hidden, rows), 'attention.wo': (hidden, hidden), 'feed_forward.w1': (hidden, ffn),
               'feed_forward.w3': (hidden, ffn), 'feed_forward.w2': (ffn, hidden)}
    state = {}
    for layer_index in range(config.num_hidden_layers):
        layer = f'llm.base_model.model.model.layers.{layer_index}.'
        for module, (fan_in, fan_out) in modules.items():
            state[f'{layer}{module}.lora_A.weight'] = torch.randn(rank, fan_in, generator=gen)
            state[f'{layer}{module}.lora_B.weight'] = torch.randn(fan_out, rank, generator=gen)
    state.update({f'projector.model.{key}': torch.randn(value.shape, generator=gen)
                  for key, value in model.projector.state_dict().items()})
    torch.save({'state_dict': state, 'meta': {}}, path)
    return state


def test_xtuner_lora_checkpoint_of_internlm2_loads_with_wqkv_split_exactly(tiny_zoo, tmp_path):
    from mmllava.config import build, load_config, parse_cfg_options
    from mmllava.errors import MMLLaVAError
    from mmllava.formats.internlm2 import internlm2_to_llama

    cfg = load_config(FINETUNE, parse_cfg_options(cfg_options(tiny_zoo, qlora=False)))
    cfg.model.pretrained_pth = None
    model = build(cfg.model)
    rank = cfg.model.llm_lora['r']
    xtuner = _xtuner_lora_checkpoint(tmp_path / 'iter_100.pth', model, rank)
    model.load_pretrained(str(tmp_path / 'iter_100.pth'))

    prefix = 'llm.base_model.model.model.layers.0.'
    # the packed update B @ A, split as the packed weight is split (tested against InternLM2's own forward)
    delta = xtuner[prefix + 'attention.wqkv.lora_B.weight'] @ xtuner[prefix + 'attention.wqkv.lora_A.weight']
    expected = internlm2_to_llama({'attention.wqkv.weight': delta}, model.llm.config)
    attention = model.llm.base_model.model.model.layers[0].self_attn
    for name in ('q', 'k', 'v'):
        projection = getattr(attention, f'{name}_proj')
        got = projection.lora_B['default'].weight @ projection.lora_A['default'].weight
        want = expected[f'self_attn.{name}_proj.weight']
        # rows of the same rank-r product, computed by another GEMM call (its own blocking and order)
        torch.testing.assert_close(got, want, rtol=0, atol=rounding_tolerance(torch.float32, rank, want.abs().max()))
    assert torch.equal(attention.o_proj.lora_A['default'].weight, xtuner[prefix + 'attention.wo.lora_A.weight'])
    mlp = model.llm.base_model.model.model.layers[0].mlp
    assert torch.equal(mlp.down_proj.lora_B['default'].weight, xtuner[prefix + 'feed_forward.w2.lora_B.weight'])
    assert torch.equal(model.projector[0].weight, xtuner['projector.model.0.weight'])

    # another LoRA rank: a clear error naming the key, not torch's size-mismatch dump
    _xtuner_lora_checkpoint(tmp_path / 'rank8.pth', model, rank // 2)
    with pytest.raises(MMLLaVAError, match=r'^pretrained_pth: .*rank8\.pth: 28 trained weights of the wrong shape '
                                           r'\(llm\.base_model\.model\.model\.layers\.0\.mlp\.down_proj\.lora_A\.default'
                                           r'\.weight: \(8, 128\) in the file, the model expects \(16, 128\), …\)$'):
        model.load_pretrained(str(tmp_path / 'rank8.pth'))
    # convert loads the same file as its `checkpoint`: the error says so, and carries the setting and path
    with pytest.raises(MMLLaVAError) as as_checkpoint:
        model.load_pretrained(str(tmp_path / 'rank8.pth'), setting='checkpoint')
    assert str(as_checkpoint.value).startswith(f'checkpoint: {tmp_path / "rank8.pth"}: 28 trained weights of the '
                                               'wrong shape')
    assert (as_checkpoint.value.setting, as_checkpoint.value.value) == ('checkpoint', str(tmp_path / 'rank8.pth'))
