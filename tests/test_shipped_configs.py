"""Every shipped config loads with the variables users edit; every tiny config builds its model and
dataset on the tiny zoo and takes one optimiser step with a falling loss."""
import pytest
import torch

from mmllava.config import build, load_config

from mmllava.config_source import shipped_configs

USER_VARIABLES = ('llm_name_or_path', 'visual_encoder_name_or_path', 'data_root', 'data_path', 'image_folder',
                  'prompt_template', 'max_length', 'batch_size', 'accumulative_counts', 'dataloader_num_workers',
                  'max_epochs', 'optim_type', 'lr', 'betas', 'weight_decay', 'max_norm', 'warmup_ratio',
                  'save_steps', 'save_total_limit', 'evaluation_freq', 'SYSTEM', 'evaluation_images',
                  'evaluation_inputs')
LLAVA = sorted(name for name, path in shipped_configs().items() if path.parent.parent.name == 'llava')
TINY = [name for name in LLAVA if name.startswith('llava_tiny_')]
TINY_LLM = ('internlm2_chat', 'llama3_instruct', 'qwen2_5_instruct')


def test_seed_config_names_are_shipped():
    for name in ('llava_internlm2_chat_1_8b_clip_vit_large_p14_336_e1_gpu8_pretrain',
                 'llava_internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune',
                 'llava_llama3_8b_instruct_clip_vit_large_p14_336_e1_gpu8_pretrain',
                 'llava_llama3_8b_instruct_qlora_clip_vit_large_p14_336_lora_e1_finetune'):
        assert name in LLAVA
    assert len([n for n in LLAVA if n.startswith('llava_qwen2_5')]) == 4
    assert len(TINY) == 8


@pytest.mark.parametrize('name', LLAVA)
def test_config_loads_with_user_variables(name):
    cfg = load_config(name)
    for key in USER_VARIABLES:
        assert key in cfg, f'{name}: no {key}'
    assert cfg.model.llm.path == cfg.llm_name_or_path
    assert cfg.train_dataloader.dataset.data_path == cfg.data_path


@pytest.mark.parametrize('name', TINY)
def test_tiny_config_takes_a_training_step(name, tiny_zoo):
    llm = next(key for key in TINY_LLM if key in name)
    options = {'llm_name_or_path': str(tiny_zoo[llm]), 'visual_encoder_name_or_path': str(tiny_zoo['clip_vit']),
               'data_root': 'data/synthetic/'}
    if 'pretrained_pth' in load_config(name):
        options['pretrained_pth'] = None  # the pretrain stage's checkpoint does not exist here
    cfg = load_config(name, options)
    model = build(cfg.model)
    dataset = build(cfg.train_dataloader.dataset)
    collate = cfg.train_dataloader.collate_fn['type']
    batch = collate([dataset[i] for i in range(4)])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and set(model.state_dict()) == model.trainable_keys()
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    losses = []
    for _ in range(3):
        loss = model(batch['data'])['loss']
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


ALL = sorted(shipped_configs())
TINY_ALL = [name for name in ALL if '_tiny_' in name]


@pytest.mark.parametrize('name', TINY_ALL)
def test_a_tiny_config_is_a_short_override_of_a_real_config(name):
    """The tests that run a tiny config run the parts 2-5 of the real config users copy."""
    import ast

    from mmllava.config_source import config_source

    path = shipped_configs()[name]
    text = path.read_text()
    assert len(text.splitlines()) <= 40
    base = ast.literal_eval(next(line for line in text.splitlines() if line.startswith('base_config = '))[14:])
    assert base in ALL and '_tiny_' not in base
    assert 'base_config' not in shipped_configs()[base].read_text()  # the real one is standalone
    flat = config_source(path).text  # that is what runs, and what copy-cfg writes
    assert flat.count('PART ') == 5 and '{{tiny_models}}' in flat


@pytest.mark.parametrize('name', ALL)
def test_prepare_config_changes_only_the_run_settings_of_a_shipped_config(name, tmp_path, monkeypatch):
    """A shipped config names what runs (hooks, visualizer, optimizer wrapper): nothing is substituted."""
    from mmllava.engine import runner

    logged = []
    monkeypatch.setattr(runner, 'log', lambda message, level=None: logged.append(message))
    options = {'pretrained_pth': None} if 'pretrained_pth' in load_config(name) else {}
    cfg = load_config(name, options)
    prepared = runner.prepare_config(cfg, work_dir=str(tmp_path), seed=7)
    run_settings = {'work_dir', 'experiment_name', 'launcher', 'randomness'}
    assert set(prepared.keys()) - set(cfg.keys()) <= run_settings
    for key in cfg.keys() - run_settings:
        assert prepared[key] == cfg[key], key
    assert prepared.randomness == {**cfg.randomness, 'seed': 7}
    assert prepared.work_dir == str(tmp_path) and prepared.launcher == 'none'
    assert logged == []
