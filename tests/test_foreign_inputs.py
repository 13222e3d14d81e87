"""Inputs written by other tools: transformers 4.52.4 and transformers 5 (each in its own process,
``tests/foreign_writer.py``) write random-init CLIP, Llama, Qwen2, LLaVA and InternVL folders;
mmllava loads (and trains from) them, and every load gives the writer's own outputs. A damaged
folder of each component is refused with the one-line error of ``mmllava.formats.strict``.

Tolerance: float32 on both sides, the same weights and the same arithmetic up to the order of
operations (the writers' attention and fused projections versus ours). Each output is a chain of
reductions over at most 128 terms of magnitude O(1) through a few layers: rounding is about
eps_fp32 (1.2e-7) x sqrt(128) x depth ~ 1e-6, so 1e-5 absolute leaves a 10x margin, while a single
wrong or random weight (std 0.2 here) moves the outputs by more than 1e-2.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from foreign_tools import run_python, transformers4  # noqa: F401 (a fixture)
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mmllava.constants import IMAGE_TOKEN_INDEX
from mmllava.errors import MMLLaVAError

REPO = Path(__file__).resolve().parents[1]
WRITER = Path(__file__).with_name('foreign_writer.py')
ATOL = 1e-5  # see the module docstring
CLIP_FOLDERS = ('clip_full', 'clip_vision', 'clip_projection', 'llava')


@pytest.fixture(scope='module')
def written(transformers4, tiny_zoo, tmp_path_factory) -> dict:
    """``{'4': (folder, expected tensors, facts), '5': ...}``: what each transformers version wrote."""
    out = {}
    for version, pythonpath in (('4', transformers4), ('5', None)):
        folder = tmp_path_factory.mktemp(f'transformers{version}')
        facts = run_python(WRITER.read_text(), folder, tiny_zoo['clip_vit'].parent, pythonpath=pythonpath)
        assert facts['version'].startswith(f'{version}.')
        out[version] = (folder, load_file(folder / 'expected.safetensors'), facts)
    return out


def _keys(folder: Path) -> list[str]:
    keys = []
    for path in sorted(folder.glob('*.safetensors')):
        with safe_open(str(path), framework='pt') as f:
            keys += list(f.keys())
    for path in sorted(folder.glob('*.bin')):
        keys += list(torch.load(path, weights_only=True, mmap=True))
    return keys


# ------------------------------------------------------------------ layouts read, outputs equal
@pytest.mark.parametrize('version', ['4', '5'])
@pytest.mark.parametrize('name', CLIP_FOLDERS)
def test_every_clip_layout_gives_the_writers_features(written, version, name):
    from mmllava.pretrained import load_vision_encoder

    folder, expected, _ = written[version]
    keys = _keys(folder / name)
    # the layouts this test claims to read (so a writer that changed its layout cannot pass unnoticed)
    layout = {('5', 'clip_vision'): 'embeddings.', ('4', 'llava'): 'vision_tower.vision_model.',
              ('5', 'llava'): 'vision_tower.embeddings.'}.get((version, name), 'vision_model.')
    assert any(key.startswith(layout) for key in keys)
    if name == 'clip_vision' and version == '4':  # .bin shards with an index
        assert (folder / name / 'pytorch_model.bin.index.json').is_file()
    if name == 'clip_projection':  # safetensors shards, the projection head beside the tower
        assert (folder / name / 'model.safetensors.index.json').is_file() and 'visual_projection.weight' in keys
    if name == 'clip_full':
        assert any(key.startswith('text_model.') for key in keys)

    tower = load_vision_encoder(folder / name)
    with torch.no_grad():
        hidden = torch.stack(tower(expected['pixels'], output_hidden_states=True).hidden_states)
    torch.testing.assert_close(hidden, expected[f'{name}.hidden_states'], rtol=0, atol=ATOL)


def test_unprefixed_clip_of_transformers5_is_not_random(written):
    """The issue's failure 1: transformers 5's CLIPVisionModel keys have no ``vision_model.`` prefix;
    they are read (features equal the writer's above), and a layout nobody writes is refused."""
    from mmllava.pretrained import load_vision_encoder

    folder, _, _ = written['5']
    source = folder / 'clip_vision'
    assert not any(key.startswith('vision_model.') for key in _keys(source))
    odd = folder / 'clip_odd_layout'
    shutil.copytree(source, odd)
    state = load_file(odd / 'model.safetensors')
    save_file({f'backbone.{key}': value for key, value in state.items()}, str(odd / 'model.safetensors'))
    n = len(state)
    with pytest.raises(MMLLaVAError) as error:
        load_vision_encoder(odd)
    assert str(error.value) == (
        f'visual_encoder_name_or_path: {odd}: {n} of {n} vision weights missing (embeddings.class_embedding, '
        'embeddings.patch_embedding.weight, embeddings.position_embedding.weight, …): key layout not recognised; '
        f'{n} of {n} tensors read unused (backbone.embeddings.class_embedding, '
        'backbone.embeddings.patch_embedding.weight, backbone.embeddings.position_embedding.weight, …)')


@pytest.mark.parametrize('version', ['4', '5'])
@pytest.mark.parametrize('name', ['llama', 'qwen2'])
def test_llm_folders_give_the_writers_logits_and_token_ids(written, version, name):
    from mmllava.pretrained import load_llm, load_tokenizer

    folder, expected, facts = written[version]
    config = facts[name]['config']
    # rope_theta (4.x) or rope_parameters (5.x): a lost theta would change every logit
    assert ('rope_parameters' in config) == (version == '5') and ('rope_theta' in config) == (version == '4')
    tied = name == 'qwen2'
    assert config['tie_word_embeddings'] is tied
    assert ('lm_head.weight' in _keys(folder / name)) is not tied
    model = load_llm(folder / name)
    with torch.no_grad():
        logits = model(input_ids=expected[f'{name}.ids']).logits
    torch.testing.assert_close(logits, expected[f'{name}.logits'], rtol=0, atol=ATOL)
    # the tokenizer files each version writes (tokenizer_class TokenizersBackend, PreTrainedTokenizer...)
    tokenizer = load_tokenizer(folder / name)
    assert tokenizer(facts['text'])['input_ids'] == facts[name]['text_ids'], facts[name]['tokenizer_class']


@pytest.mark.parametrize('version', ['4', '5'])
def test_llama_class_tokenizer_files_give_the_writers_ids(written, version):
    from mmllava.pretrained import load_tokenizer

    folder, _, facts = written[version]
    tokenizer = load_tokenizer(folder / 'llama_tokenizer')
    assert tokenizer(facts['text'])['input_ids'] == facts['llama_tokenizer']['text_ids']


def test_tokenizer_classes_written(written):
    """The tokenizer files the two versions write differ (what the tests above read)."""
    classes = {(version, name): written[version][2][name]['tokenizer_class']
               for version in '45' for name in ('llama', 'qwen2', 'llama_tokenizer')}
    assert classes == {('4', 'llama'): 'PreTrainedTokenizer', ('5', 'llama'): 'TokenizersBackend',
                       ('4', 'qwen2'): 'Qwen2Tokenizer', ('5', 'qwen2'): 'Qwen2Tokenizer',
                       ('4', 'llama_tokenizer'): 'LlamaTokenizerFast', ('5', 'llama_tokenizer'): 'LlamaTokenizer'}


@pytest.mark.parametrize('version', ['4', '5'])
def test_llava_folder_gives_the_writers_logits(written, version):
    """LLaVA-Llama-3 from a transformers LLaVA folder: the vision tower and (as ``pretrained_pth``)
    the projector come from it, the LLM from the Llama folder the writer copied into it."""
    from mmllava.pretrained import load_llm, load_vision_encoder
    from mmllava.models import LLaVAModel

    folder, expected, facts = written[version]
    model = LLaVAModel(llm=load_llm(folder / 'llama'), visual_encoder=load_vision_encoder(folder / 'llava'),
                       pretrained_pth=str(folder / 'llava'), use_activation_checkpointing=False).eval()
    ids = expected['llava.ids'].masked_fill(expected['llava.ids'] == facts['llava']['image_token'], IMAGE_TOKEN_INDEX)
    with torch.no_grad():
        logits = model({'input_ids': ids, 'pixel_values': expected['pixels']}, mode='tensor')
    torch.testing.assert_close(logits, expected['llava.logits'], rtol=0, atol=ATOL)


@pytest.mark.parametrize('version', ['4', '5'])
def test_native_internvl_folder_gives_the_writers_logits(written, version):
    """InternVL2 from a transformers-native ``InternVLForConditionalGeneration`` folder (Qwen2 LLM;
    transformers 5 ties its head through the top-level config, 4.52 does not)."""
    from mmllava.pretrained.internvl_folder import load_internvl
    from mmllava.models import InternVLModel

    folder, expected, facts = written[version]
    model = InternVLModel(load_internvl(folder / 'internvl'), use_activation_checkpointing=False).eval()
    token = facts['internvl']['image_token']
    ids = expected['internvl.ids'].masked_fill(expected['internvl.ids'] == token, IMAGE_TOKEN_INDEX)
    with torch.no_grad():
        logits = model({'input_ids': ids, 'pixel_values': expected['internvl.pixels']}, mode='tensor')
    torch.testing.assert_close(logits, expected['internvl.logits'], rtol=0, atol=ATOL)


def _train(work_dir: Path, *options: str) -> subprocess.CompletedProcess:
    """Four steps of the tiny LLaVA-Llama-3 QLoRA fine-tune, per-step losses logged."""
    settings = [f'data_root={REPO}/data/synthetic/', 'pretrained_pth=None', 'batch_size=2', 'max_epochs=0.031',
                'save_steps=100', 'evaluation_inputs=[]', 'default_hooks.logger.interval=1',
                'log_processor.window_size=1', *options]
    return subprocess.run([sys.executable, '-m', 'mmllava.cli', 'train', 'llava_tiny_llama3_instruct_qlora_clip_finetune',
                           '--work-dir', str(work_dir), '--cfg-options', *settings],
                          cwd=work_dir.parent, capture_output=True, text=True, timeout=600)


def _losses(work_dir: Path) -> list[float]:
    lines = [json.loads(line) for path in work_dir.glob('*/vis_data/scalars.json')
             for line in path.read_text().splitlines()]
    return [record['loss'] for record in lines if 'loss' in record]


def test_qlora_trains_from_foreign_llama_and_unprefixed_clip(written, tmp_path):
    """The issue's run: the Llama-3 QLoRA config pointed at a Llama folder of transformers 4.52 and
    a CLIP of transformers 5 (unprefixed keys) trains, and its loss falls."""
    work_dir = tmp_path / 'work'
    result = _train(work_dir, f'llm_name_or_path={written["4"][0] / "llama"}',
                    f'visual_encoder_name_or_path={written["5"][0] / "clip_vision"}')
    assert result.returncode == 0, result.stderr[-3000:]
    losses = _losses(work_dir)
    assert len(losses) == 4 and losses[-1] < losses[0], losses


# ------------------------------------------------------------------ damaged folders are refused
def _damage(source: Path, dest: Path, kind: str, key: str) -> tuple[str, tuple, tuple]:
    """Copy ``source`` (a folder or one weights file) to ``dest`` with ``key`` removed, renamed
    (``.weight`` -> ``_v2.weight``) or one row longer; returns (new key, shape read, true shape)."""
    if source.is_dir():
        shutil.copytree(source, dest)
        index = next(iter(sorted(dest.glob('*.index.json'))), None)
        weight_map = json.loads(index.read_text())['weight_map'] if index else {}
        name = weight_map.get(key) or next(p.name for p in dest.iterdir() if p.suffix in ('.safetensors', '.bin'))
        path = dest / name
    else:
        shutil.copy(source, dest)
        path = dest
    if path.suffix == '.safetensors':
        state = load_file(path)
    else:
        state = torch.load(path, weights_only=True)
    holder = state['state_dict'] if 'state_dict' in state else state
    tensor = holder.pop(key)
    new_key, shape = key, tuple(tensor.shape)
    if kind == 'renamed':
        new_key = key.replace('.weight', '_v2.weight')
        holder[new_key] = tensor
    elif kind == 'wrong_shape':
        holder[key] = torch.zeros(shape[0] + 1, *shape[1:])
    if path.suffix == '.safetensors':
        save_file(holder, str(path))
    else:
        torch.save(state, path)
    if source.is_dir() and index and kind != 'wrong_shape':
        data = json.loads(index.read_text())
        data['weight_map'].pop(key)
        if kind == 'renamed':
            data['weight_map'][new_key] = name
        index.write_text(json.dumps(data))
    return new_key, tuple(holder[key].shape) if kind == 'wrong_shape' else shape, shape


@pytest.fixture(scope='module')
def trained_llava(tiny_zoo, tmp_path_factory):
    """A LLaVA-Qwen2.5 model and its pretraining checkpoint (the projector), as ``iter_1.pth``."""
    from mmllava.pretrained import load_llm, load_vision_encoder
    from mmllava.models import LLaVAModel

    model = LLaVAModel(llm=load_llm(tiny_zoo['qwen2_5_instruct']),
                       visual_encoder=load_vision_encoder(tiny_zoo['clip_vit']), freeze_llm=True,
                       freeze_visual_encoder=True, use_activation_checkpointing=False)
    path = tmp_path_factory.mktemp('pretrain') / 'iter_1.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)
    return model, path


@pytest.fixture(scope='module')
def adapter(written, tmp_path_factory):
    """A PEFT LoRA adapter folder for the transformers-5 Llama, written by PEFT."""
    from peft import LoraConfig, get_peft_model

    from mmllava.pretrained import load_llm

    peft_model = get_peft_model(load_llm(written['5'][0] / 'llama'), LoraConfig(r=4, target_modules=['q_proj', 'v_proj']))
    folder = tmp_path_factory.mktemp('adapter') / 'llama_lora'
    peft_model.save_pretrained(folder)
    return folder


def _load_llm(folder):
    from mmllava.pretrained import load_llm

    load_llm(folder)


def _load_clip(folder):
    from mmllava.pretrained import load_vision_encoder

    load_vision_encoder(folder)


def _load_internvl(folder):
    from mmllava.pretrained.internvl_folder import load_internvl

    load_internvl(folder)


def _load_chat(folder):
    from mmllava.chat.loader import load_chat_model

    load_chat_model(folder, prompt_template='llama3_chat', torch_dtype='float32', device='cpu')


# (case id, source, key in the file, loader, setting, component, key as reported, renamed key as reported)
DAMAGE_CASES = {
    'LLaVA-InternLM2 LLM (remote-code layout)': (
        lambda ctx: ctx['zoo']['internlm2_chat'], 'model.layers.1.feed_forward.w2.weight', _load_llm,
        'llm_name_or_path', 'LLM', 'model.layers.1.mlp.down_proj.weight', 'model.layers.1.feed_forward.w2_v2.weight'),
    'LLaVA-Llama-3 LLM (transformers 4.52)': (
        lambda ctx: ctx['t4'] / 'llama', 'model.layers.0.mlp.up_proj.weight', _load_llm,
        'llm_name_or_path', 'LLM', 'model.layers.0.mlp.up_proj.weight', 'model.layers.0.mlp.up_proj_v2.weight'),
    'LLaVA-Qwen2.5 LLM (transformers 5, tied head)': (
        lambda ctx: ctx['t5'] / 'qwen2', 'model.layers.1.self_attn.k_proj.weight', _load_llm,
        'llm_name_or_path', 'LLM', 'model.layers.1.self_attn.k_proj.weight',
        'model.layers.1.self_attn.k_proj_v2.weight'),
    'CLIP (transformers 5, unprefixed)': (
        lambda ctx: ctx['t5'] / 'clip_vision', 'encoder.layers.2.mlp.fc1.weight', _load_clip,
        'visual_encoder_name_or_path', 'vision', 'encoder.layers.2.mlp.fc1.weight',
        'encoder.layers.2.mlp.fc1_v2.weight'),
    'CLIP (transformers 4.52, .bin shards)': (
        lambda ctx: ctx['t4'] / 'clip_vision', 'vision_model.encoder.layers.0.self_attn.out_proj.weight', _load_clip,
        'visual_encoder_name_or_path', 'vision', 'encoder.layers.0.self_attn.out_proj.weight',
        'encoder.layers.0.self_attn.out_proj_v2.weight'),
    'InternVL2 official': (
        lambda ctx: ctx['zoo']['internvl2_official'], 'vision_model.encoder.layers.1.mlp.fc2.weight', _load_internvl,
        'path', 'vision', 'encoder.layer.1.mlp.fc2.weight', 'encoder.layer.1.mlp.fc2_v2.weight'),
    'InternVL2 native (transformers 4.52)': (
        lambda ctx: ctx['t4'] / 'internvl', 'multi_modal_projector.linear_2.weight', _load_internvl,
        'path', 'projector', 'linear_2.weight', 'linear_2_v2.weight'),
    'LLaVA folder read by chat/eval/serve (transformers 4.52)': (
        lambda ctx: ctx['t4'] / 'llava', 'multi_modal_projector.linear_2.weight', _load_chat, 'model', 'LLaVA',
        'model.multi_modal_projector.linear_2.weight', 'model.multi_modal_projector.linear_2_v2.weight'),
}


@pytest.fixture(scope='module')
def damage_context(written, tiny_zoo):
    return {'zoo': tiny_zoo, 't4': written['4'][0], 't5': written['5'][0]}


@pytest.mark.parametrize('kind', ['removed', 'renamed', 'wrong_shape'])
@pytest.mark.parametrize('case', list(DAMAGE_CASES))
def test_damaged_folder_is_refused_in_one_line(damage_context, tmp_path, case, kind):
    source, key, load, setting, component, reported, renamed = DAMAGE_CASES[case]
    folder = tmp_path / 'damaged'
    _, read, true = _damage(source(damage_context), folder, kind, key)
    with pytest.raises(MMLLaVAError) as error:
        load(folder)
    _assert_refused(str(error.value), setting, folder, component, kind, reported, renamed, read, true)


def _assert_refused(message, setting, source, component, kind, reported, renamed, read, true):
    head = f'{re.escape(setting)}: {re.escape(str(source))}: '
    expected = {
        'removed': rf'1 of \d+ {component} weights missing \({re.escape(reported)}\)',
        'renamed': (rf'1 of \d+ {component} weights missing \({re.escape(reported)}\); '
                    rf'1 of \d+ tensors read unused \({re.escape(renamed)}\)'),
        'wrong_shape': (rf'1 {component} weights of the wrong shape \({re.escape(reported)}: '
                        rf'{re.escape(str(read))} in the file, the model expects {re.escape(str(true))}\)'),
    }[kind]
    assert '\n' not in message
    assert re.fullmatch(head + expected, message), message


@pytest.mark.parametrize('kind', ['removed', 'renamed', 'wrong_shape'])
def test_damaged_pretrained_pth_and_load_from_are_refused(trained_llava, tmp_path, kind):
    """The projector of a pretraining run, as ``pretrained_pth`` and as ``load_from`` / resume (a
    ``.pth`` file or a DeepSpeed folder)."""
    from mmllava.checkpoints import load_checkpoint_file, load_checkpoint_to_model

    model, path = trained_llava
    damaged = tmp_path / 'iter_1.pth'
    _, read, true = _damage(path, damaged, kind, 'projector.2.weight')
    with pytest.raises(MMLLaVAError) as error:
        model.load_pretrained(str(damaged))
    _assert_refused(str(error.value), 'pretrained_pth', damaged, 'trained', kind, 'projector.2.weight',
                    'projector.2_v2.weight', read, true)
    with pytest.raises(MMLLaVAError) as error:
        load_checkpoint_to_model(model, load_checkpoint_file(damaged))
    _assert_refused(str(error.value), 'load_from', damaged, 'trained', kind, 'projector.2.weight',
                    'projector.2_v2.weight', read, true)
    deepspeed = tmp_path / 'iter_2.pth'  # a DeepSpeed checkpoint folder holds the weights as `module`
    deepspeed.mkdir()
    torch.save({'module': torch.load(damaged, weights_only=True)['state_dict']},
               deepspeed / 'mp_rank_00_model_states.pt')
    with pytest.raises(MMLLaVAError) as error:
        load_checkpoint_to_model(model, load_checkpoint_file(deepspeed))
    _assert_refused(str(error.value), 'load_from', deepspeed, 'trained', kind, 'projector.2.weight',
                    'projector.2_v2.weight', read, true)
    saved = torch.load(path, weights_only=True)['state_dict']['projector.2.weight']
    with torch.no_grad():
        model.projector[2].weight.zero_()
    model.load_pretrained(str(path))  # the undamaged checkpoint loads
    assert torch.equal(model.projector[2].weight, saved)


@pytest.mark.parametrize('kind', ['removed', 'renamed', 'wrong_shape'])
def test_damaged_adapter_is_refused(written, adapter, tmp_path, kind):
    from mmllava.convert.merge import merge_adapter

    key = 'base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight'
    damaged = tmp_path / 'adapter'
    _, read, true = _damage(adapter, damaged, kind, key)
    with pytest.raises(MMLLaVAError) as error:
        merge_adapter(written['5'][0] / 'llama', damaged, tmp_path / 'merged')
    _assert_refused(str(error.value), 'adapter', damaged, 'adapter', kind, key,
                    key.replace('.weight', '_v2.weight'), read, true)
    assert not (tmp_path / 'merged').exists()


def test_adapter_merges_to_the_peft_models_logits(written, adapter, tmp_path):
    """The undamaged adapter loads completely: the merged folder gives PEFT's own adapted logits."""
    from peft import PeftModel

    from mmllava.pretrained import load_llm
    from mmllava.convert.merge import merge_adapter

    folder, expected, _ = written['5']
    peft_model = PeftModel.from_pretrained(load_llm(folder / 'llama'), str(adapter))
    with torch.no_grad():  # PEFT initialises lora_B to zero: give it weights that change the outputs
        for name, param in peft_model.named_parameters():
            if 'lora_B' in name:
                param.copy_(torch.randn(param.shape) * 0.2)
    changed = tmp_path / 'adapter'
    peft_model.save_pretrained(changed)
    merged = merge_adapter(folder / 'llama', changed, tmp_path / 'merged', fp32=True)
    ids = expected['llama.ids']
    with torch.no_grad():
        reference = peft_model(input_ids=ids).logits
        logits = load_llm(merged)(input_ids=ids).logits
    assert (reference - expected['llama.logits']).abs().max() > 1e-2  # the adapter matters
    torch.testing.assert_close(logits, reference, rtol=0, atol=ATOL)


def test_train_refuses_a_damaged_clip_before_any_step(written, tmp_path):
    """Through the CLI: exit 1, one line naming the setting and folder, no training step."""
    damaged = tmp_path / 'clip'
    _damage(written['5'][0] / 'clip_vision', damaged, 'removed', 'encoder.layers.2.mlp.fc1.weight')
    work_dir = tmp_path / 'work'
    result = _train(work_dir, f'llm_name_or_path={written["4"][0] / "llama"}',
                    f'visual_encoder_name_or_path={damaged}')
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f'mmllava train: error: visual_encoder_name_or_path: {damaged}: 1 of 55 vision weights missing '
        '(encoder.layers.2.mlp.fc1.weight) (set --cfg-options visual_encoder_name_or_path=..., or edit '
        'visual_encoder_name_or_path in a copy: mmllava copy-cfg llava_tiny_llama3_instruct_qlora_clip_finetune .)')
    assert _losses(work_dir) == []


def test_our_internvl_huggingface_export_reads_back_in_chat(tiny_zoo, tmp_path):
    """The native InternVL folder mmllava itself exports is an input too: ``chat`` (and so eval,
    serve, demo) loads it strictly, with the trained model's logits. Tolerance 1e-4 as the export
    tests': the export merges LoRA into the weights (W + B @ A), which reorders fp32 sums."""
    from mmllava.chat.loader import load_chat_model
    from mmllava.cli import main
    from mmllava.config import build, load_config, parse_cfg_options
    from mmllava.data.internvl_dataset import internvl_collate

    config = 'internvl_tiny_internlm2_lora_finetune'
    options = [f'path={tiny_zoo["internvl2_official"]}', f'data_root={REPO}/data/synthetic/']
    cfg = load_config(config, parse_cfg_options(options))
    model = build(cfg.model).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # adapters that change the outputs
        for param in model.parameters():
            if param.requires_grad:
                param += 0.05 * torch.randn(param.shape, generator=gen)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, tmp_path / 'iter_5.pth')
    assert main(['convert', 'pth_to_hf', config, str(tmp_path / 'iter_5.pth'), str(tmp_path / 'hf'), '--fp32',
                 '--save-format', 'huggingface', '--cfg-options', *options]) == 0
    dataset = build(cfg.internvl_dataset)
    batch = internvl_collate([dataset[i] for i in range(2)], dataset.pad_token_id)['data']
    chat = load_chat_model(tmp_path / 'hf', torch_dtype='float32', prompt_template='internlm2_chat', device='cpu')
    with torch.no_grad():
        expected, logits = model(batch, mode='tensor'), chat.model(batch, mode='tensor')
    mask = batch['attention_mask'].bool()
    torch.testing.assert_close(logits[mask], expected[mask], rtol=0, atol=1e-4)
    assert (chat.image_processor.image_size, chat.image_processor.max_num) == (56, 6)  # the tiling settings
