"""The two loops a benchmark times on one config: mmengine's runner (``build_runner``, every hook the
config and ``mmllava train`` add) and a bare PyTorch loop on an identically built model, the same
batches and the same optimizer (with the config's gradient clipping), nothing else.

Evaluation, sample logging and checkpoint saving are switched off in the runner: they are work the
user asked for, not per-step overhead, and would land in single steps.
"""
from __future__ import annotations

import copy
import shutil
import tempfile
from contextlib import nullcontext

import torch
from mmengine.hooks import Hook

from mmllava.bench.measure import StepRecorder, reset_peak_memory
from mmllava.config import build
from mmllava.engine.runner import _type_name

_NOT_TIMED_HOOKS = ('EvaluateChatHook', 'DatasetInfoHook')


class _BatchReady(Hook):
    """First hook of an iteration: the batch has been loaded."""

    def __init__(self, recorder: StepRecorder):
        self.recorder = recorder

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self.recorder.batch_ready(data_batch)


class _StepDone(Hook):
    """Last hook of an iteration (after logging), and the start of the clock."""

    def __init__(self, recorder: StepRecorder):
        self.recorder = recorder

    def before_train(self, runner) -> None:
        self.recorder.start()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.recorder.step_done()


def runner_config(cfg, steps: int, warmup: int, work_dir: str):
    """``cfg`` prepared as ``mmllava train`` does, for ``warmup + steps`` iterations (see module doc)."""
    from mmllava.engine.runner import prepare_config

    cfg = prepare_config(cfg, work_dir=work_dir)
    loop = copy.deepcopy(cfg.train_cfg)  # the config's loop type, kept an unbuilt lazy import
    loop.pop('max_epochs', None)
    loop['max_iters'] = warmup + steps
    cfg.train_cfg = loop
    cfg.custom_hooks = [h for h in cfg.custom_hooks
                        if not (isinstance(h, dict) and _type_name(h.get('type')) in _NOT_TIMED_HOOKS)]
    if cfg.get('default_hooks'):
        cfg.default_hooks['checkpoint'] = None
    return cfg


def run_framework(cfg, steps: int, warmup: int) -> dict:
    """Train ``warmup + steps`` iterations with ``build_runner``; the steady-state summary."""
    from mmllava.engine.runner import build_runner

    work_dir = tempfile.mkdtemp(prefix='mmllava_bench_')
    try:
        runner = build_runner(runner_config(cfg, steps, warmup, work_dir))
        recorder = StepRecorder(warmup)
        runner.register_hook(_BatchReady(recorder), priority='HIGHEST')
        runner.register_hook(_StepDone(recorder), priority='LOWEST')
        reset_peak_memory()
        runner.train()
        return recorder.summary()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def _batches(loader):
    """Batches without end: epoch after epoch, each epoch's order from the sampler's ``set_epoch``."""
    epoch = 0
    while True:
        if hasattr(loader.sampler, 'set_epoch'):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _to_device(data: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in data.items()}


def run_reference(cfg, steps: int, warmup: int) -> dict:
    """The bare loop on ``cfg``: build the model, the dataloader and the optimizer from the config,
    then ``loss.backward(); clip; opt.step()`` per batch."""
    from mmengine.runner import Runner

    from mmllava.engine import compat

    compat.apply()  # the runner's dataloader fixes, so both loops get their batches the same way
    # Prepared as for the runner (e.g. the CPU optimizer wrapper); nothing is written to a work dir.
    cfg = runner_config(cfg, steps, warmup, work_dir=tempfile.gettempdir())
    seed = (cfg.get('randomness') or {}).get('seed', 0)
    torch.manual_seed(seed)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    model = build(copy.deepcopy(cfg.model)).to(device).train()
    loader = Runner.build_dataloader(copy.deepcopy(cfg.train_dataloader), seed=seed)
    wrapper = cfg.optim_wrapper
    optimizer = build({**copy.deepcopy(wrapper.optimizer), 'params': [p for p in model.parameters() if p.requires_grad]})
    clip = wrapper.get('clip_grad')
    # Same precision as the runner: AmpOptimWrapper autocasts on CUDA (prepare_config drops it on a CPU).
    autocast = (torch.autocast('cuda', dtype=getattr(torch, wrapper.get('dtype') or 'float16'))
                if _type_name(wrapper.get('type')) == 'AmpOptimWrapper' else nullcontext())
    params = [p for group in optimizer.param_groups for p in group['params']]
    recorder = StepRecorder(warmup)
    batches = _batches(loader)
    reset_peak_memory()
    recorder.start()
    for _ in range(warmup + steps):
        batch = next(batches)
        recorder.batch_ready(batch)
        with autocast:
            loss = model(_to_device(batch['data'], device), mode='loss')['loss']
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, **clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recorder.step_done()
    return recorder.summary()
