"""A config written for XTuner or plain mmengine gets mmllava's hooks, visualizer and CPU optimizer
wrapper substituted at ``train``, each with one log line saying what, by what and why."""
import textwrap

import pytest

from mmllava.config import load_config

USER_CONFIG = textwrap.dedent('''\
    from mmengine.hooks import CheckpointHook, IterTimerHook
    from mmengine.optim import AmpOptimWrapper
    from torch.optim import AdamW

    model = dict(type='MyModel')
    train_dataloader = dict(batch_size=1, dataset=dict(type='MyDataset'))
    train_cfg = dict(by_epoch=True, max_epochs=1)
    optim_wrapper = dict(type=AmpOptimWrapper, optimizer=dict(type=AdamW, lr=1e-4), loss_scale='dynamic',
                         dtype='bfloat16')
    custom_hooks = []
    default_hooks = dict(timer=dict(type=IterTimerHook),
                         checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=10))
    visualizer = None
''')


@pytest.fixture
def logged(monkeypatch):
    from mmllava.engine import runner

    lines = []
    monkeypatch.setattr(runner, 'log', lambda message, level=None: lines.append(message))
    monkeypatch.setattr(runner.torch.cuda, 'is_available', lambda: False)
    return lines


def test_each_substitution_in_a_users_config_is_one_log_line(tmp_path, logged):
    from mmengine.visualization import TensorboardVisBackend, Visualizer

    from mmllava.engine import CheckpointHook, ThroughputHook, TrainSummaryHook, mixed_precision_optim_wrapper
    from mmllava.engine.runner import prepare_config

    path = tmp_path / 'xtuner_style.py'
    path.write_text(USER_CONFIG)
    cfg = prepare_config(load_config(path), work_dir=str(tmp_path / 'work'), launcher='pytorch')
    assert logged == [
        "config: default_hooks.checkpoint: mmengine's CheckpointHook -> mmllava.engine.CheckpointHook (same "
        'arguments; a crash while saving leaves last_checkpoint naming a complete checkpoint, and the RNG state '
        'is saved for an exact --resume)',
        'config: custom_hooks: no ThroughputHook -> ThroughputHook added (tokens/s and peak memory in the log)',
        "config: custom_hooks: no TrainSummaryHook -> TrainSummaryHook added (the run's header and summary in "
        'the terminal)',
        'config: visualizer: None -> Visualizer with LocalVisBackend and TensorboardVisBackend (the loss and lr '
        'curves in WORK_DIR/TIMESTAMP/vis_data, for TensorBoard)',
        "config: optim_wrapper: mmengine's AmpOptimWrapper -> mmllava.engine.mixed_precision_optim_wrapper "
        '(AmpOptimWrapper needs a CUDA device and there is none: plain fp32 steps here, AmpOptimWrapper where '
        'CUDA is)',
        'config: model_wrapper_cfg: None -> MMDistributedDataParallel with device_ids=None (--launcher pytorch '
        'without CUDA: DDP takes no device ids for a model on the CPU)']
    assert cfg.default_hooks.checkpoint.type is CheckpointHook and cfg.default_hooks.checkpoint.interval == 10
    assert [h.type for h in cfg.custom_hooks] == [ThroughputHook, TrainSummaryHook]
    assert cfg.visualizer.type is Visualizer and cfg.visualizer.vis_backends[1].type is TensorboardVisBackend
    assert cfg.optim_wrapper.type is mixed_precision_optim_wrapper and cfg.optim_wrapper.dtype == 'bfloat16'
    assert cfg.model_wrapper_cfg.device_ids is None


def test_the_cpu_optimizer_wrapper_takes_plain_fp32_steps(logged):
    import torch
    from mmengine.optim import OptimWrapper

    from mmllava.engine.wrappers import autocast_dtype, mixed_precision_optim_wrapper

    layer = torch.nn.Linear(2, 1)
    wrapper = mixed_precision_optim_wrapper(optimizer=torch.optim.SGD(layer.parameters(), lr=0.1),
                                            loss_scale='dynamic', dtype='bfloat16', clip_grad=dict(max_norm=1))
    assert type(wrapper) is OptimWrapper and wrapper.clip_grad_kwargs == {'max_norm': 1}
    assert autocast_dtype(dict(type=mixed_precision_optim_wrapper, dtype='bfloat16')) is None
    assert autocast_dtype(dict(type='AmpOptimWrapper')) is torch.float16
