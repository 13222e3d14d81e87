"""The two loops a benchmark times on one config: mmengine's runner (``build_runner``, every hook the
config and ``mmllava train`` add) and a bare PyTorch loop on an identically built model, the same
batches, the same optimizer (with the config's gradient clipping) and learning-rate schedule,
nothing else; with ``deepspeed``, both through a DeepSpeed engine of the same ZeRO config. Both
record every step's loss, so the two can be checked to train identically.

Evaluation, sample logging and checkpoint saving are switched off in the runner: they are work the
user asked for, not per-step overhead, and would land in single steps.
"""
from __future__ import annotations

import copy
import os
import shutil
import tempfile
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.registry import PARAM_SCHEDULERS
from mmengine.runner import Runner
from torch.utils.flop_counter import FlopCounterMode

from mmllava.bench.step_records import StepRecorder, batch_counts, reset_peak_memory
from mmllava.config import build
from mmllava.engine import compat
from mmllava.engine.launch import single_process_env
from mmllava.engine.loops import with_worker_init
from mmllava.engine.runner import _type_name, build_runner, prepare_config
from mmllava.engine.schedule import exact_boundaries

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
        self.recorder.step_done(outputs['loss'])


class _CountFlops(Hook):
    """Counts the FLOPs of the first (warm-up) iteration with ``_counting``, as the bare loop does."""

    def __init__(self, recorder: StepRecorder):
        self.recorder, self.counting = recorder, None

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter == 0:
            self.counting = _counting(self.recorder, data_batch)
            self.counting.__enter__()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if self.counting is not None:
            self.counting.__exit__(None, None, None)
            self.counting = None


def runner_config(cfg, steps: int, warmup: int, work_dir: str, deepspeed: str | None = None):
    """``cfg`` prepared as ``mmllava train [--deepspeed ZERO]`` does, for ``warmup + steps``
    iterations (see module doc)."""
    cfg = prepare_config(cfg, work_dir=work_dir, deepspeed=deepspeed)
    loop = copy.deepcopy(cfg.train_cfg)  # the config's loop type, kept an unbuilt lazy import
    loop.pop('max_epochs', None)
    loop['max_iters'] = warmup + steps
    cfg.train_cfg = loop
    cfg.custom_hooks = [h for h in cfg.custom_hooks
                        if not (isinstance(h, dict) and _type_name(h.get('type')) in _NOT_TIMED_HOOKS)]
    if cfg.get('default_hooks'):
        cfg.default_hooks['checkpoint'] = None
    return cfg


def run_framework(cfg, steps: int, warmup: int, deepspeed: str | None = None) -> dict:
    """Train ``warmup + steps`` iterations with ``build_runner``; the steady-state summary."""
    work_dir = tempfile.mkdtemp(prefix='mmllava_bench_')
    try:
        runner = build_runner(runner_config(cfg, steps, warmup, work_dir, deepspeed))
        recorder = StepRecorder(warmup)
        runner.register_hook(_BatchReady(recorder), priority='HIGHEST')
        runner.register_hook(_StepDone(recorder), priority='LOWEST')
        if warmup:  # counting slows its step down: only a warm-up step may carry it
            runner.register_hook(_CountFlops(recorder), priority='VERY_HIGH')
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


class BareLoop:
    """The bare loop's parts, built from a config: ``model``, endless ``batches`` and ``train_step(batch)``
    (forward, backward, clipping, optimizer and schedulers' step; returns the loss)."""

    def __init__(self, cfg, steps: int, warmup: int, deepspeed: str | None = None):
        compat.apply()
        # Prepared as for the runner (e.g. the CPU optimizer wrapper); nothing is written to a work dir.
        cfg = runner_config(cfg, steps, warmup, work_dir=tempfile.gettempdir(), deepspeed=deepspeed)
        seed = (cfg.get('randomness') or {}).get('seed', 0)
        torch.manual_seed(seed)
        self.device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
        self.model = build(copy.deepcopy(cfg.model)).to(self.device).train()
        # the runner's worker init (TrainLoop), so both loops get their batches the same way
        loader = Runner.build_dataloader(with_worker_init(copy.deepcopy(cfg.train_dataloader), seed, rank=0),
                                         seed=seed)
        wrapper = cfg.optim_wrapper
        optimizer = build({**copy.deepcopy(wrapper.optimizer),
                           'params': [p for p in self.model.parameters() if p.requires_grad]})
        if deepspeed:
            self._step = _deepspeed_step(self.model, optimizer, cfg.strategy['config'])
        else:
            self._step = _plain_step(self.model, optimizer, wrapper)
        self.schedulers = _schedulers(cfg.get('param_scheduler'), optimizer, len(loader))
        self.batches = _batches(loader)

    def train_step(self, batch: dict) -> torch.Tensor:
        loss = self._step(_to_device(batch['data'], self.device))
        for scheduler in self.schedulers:
            scheduler.step()
        return loss


def run_reference(cfg, steps: int, warmup: int, deepspeed: str | None = None) -> dict:
    """The bare loop on ``cfg``: build the model, the dataloader, the optimizer and the lr schedule
    from the config, then per batch ``loss.backward(); clip; opt.step()`` (or DeepSpeed's
    ``engine.backward(loss); engine.step()``) and the schedulers' step."""
    loop = BareLoop(cfg, steps, warmup, deepspeed)
    recorder = StepRecorder(warmup)
    reset_peak_memory()
    recorder.start()
    for index in range(warmup + steps):
        batch = next(loop.batches)
        recorder.batch_ready(batch)
        # the first warm-up step is counted as in the runner (the counter's kernels round alike)
        with _counting(recorder, batch) if index == 0 and warmup else nullcontext():
            loss = loop.train_step(batch)
        recorder.step_done(loss)
    return recorder.summary()


@contextmanager
def _counting(recorder: StepRecorder, batch):
    """Count the FLOPs run inside for ``recorder``, per real token of ``batch``
    (``torch.utils.flop_counter``: matrix products, convolutions and attention, forward and
    backward, activation-checkpoint recomputation included)."""
    with FlopCounterMode(display=False) as counter:
        yield
    recorder.flops_counted(counter.get_total_flops(), batch_counts(batch)[1])


def _plain_step(model, optimizer, wrapper):
    """One optimizer step as ``OptimWrapper`` takes it: autocast where the config's wrapper does
    (``AmpOptimWrapper``, on a CUDA device), clipping as ``clip_grad`` says."""
    from mmllava.engine.wrappers import autocast_dtype

    clip = wrapper.get('clip_grad')
    dtype = autocast_dtype(wrapper)
    autocast = torch.autocast('cuda', dtype=dtype) if dtype is not None else nullcontext()
    params = [p for group in optimizer.param_groups for p in group['params']]

    def step(data):
        with autocast:
            loss = model(data, mode='loss')['loss']
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, **clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def _deepspeed_step(model, optimizer, ds_config: dict):
    """One step of a DeepSpeed engine on ``model`` and ``optimizer`` (clipping and precision come
    from ``ds_config``); floating inputs are cast to the engine's half type as mmengine's wrapper does."""
    import deepspeed  # seconds to import: only the DeepSpeed variant of the bench pays it

    if not dist.is_initialized():  # a world of one, as `mmllava train --deepspeed` starts it
        os.environ.update(single_process_env())
        deepspeed.init_distributed(dist_backend='nccl' if torch.cuda.is_available() else 'gloo')
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    half = torch.bfloat16 if engine.bfloat16_enabled() else torch.float16 if engine.fp16_enabled() else None

    def step(data):
        if half is not None:
            data = {k: v.to(half) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                    for k, v in data.items()}
        loss = engine(data, mode='loss')['loss']
        engine.backward(loss)
        engine.step()
        return loss

    return step


def _schedulers(scheduler_cfgs, optimizer, epoch_length: int) -> list:
    """The config's ``param_scheduler`` on ``optimizer``, built as the runner builds them (epoch-based
    phases converted to iterations of ``epoch_length``, on the runner's boundaries)."""
    if isinstance(scheduler_cfgs, dict):
        scheduler_cfgs = [scheduler_cfgs]
    scheduler_cfgs = exact_boundaries(scheduler_cfgs, epoch_length)
    return [PARAM_SCHEDULERS.build(copy.deepcopy(c), default_args=dict(optimizer=optimizer, epoch_length=epoch_length))
            for c in scheduler_cfgs or []]
