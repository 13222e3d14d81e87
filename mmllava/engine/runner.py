"""From a loaded config and the ``train`` options to an mmengine runner.

``prepare_config`` rewrites an XTuner-style config for this process (work dir, seed, resume,
DeepSpeed, CPU fallbacks, crash-safe checkpoints, logging hooks, TensorBoard);
``build_runner`` applies the compatibility layer and builds ``Runner`` or, under DeepSpeed,
``FlexibleRunner``.
"""
from __future__ import annotations

import copy
import logging
import os
import uuid

import torch

from mmllava.checkpoints import resolve_checkpoint
from mmllava.engine.compat import log
from mmllava.errors import MMLLaVAError


def _type_name(obj_type) -> str:
    return obj_type if isinstance(obj_type, str) else getattr(obj_type, '__name__', '')


def _lazy(cls):
    """A class as a config value that the dumped config can print (as its import path)."""
    from mmengine.config.lazy import LazyObject

    return LazyObject(cls.__module__, cls.__name__)


def _resolve_resume(cfg, resume, deepspeed: bool) -> None:
    """``resume``: None (keep the config's ``resume``/``load_from``), True (latest in the work
    dir) or a checkpoint path. Sets ``cfg.resume``/``cfg.load_from`` to an explicit checkpoint."""
    from mmengine.runner import find_latest_checkpoint

    if resume is None:
        if not cfg.get('resume'):
            return
        resume = cfg.get('load_from') or True
    if resume is True:
        latest = find_latest_checkpoint(cfg.work_dir) if os.path.isdir(cfg.work_dir) else None
        if latest is None:
            log(f'--resume: no checkpoint in {cfg.work_dir} yet; training from the start', logging.WARNING)
            cfg.resume, cfg.load_from = False, None
            return
        resume = latest
    resume = resolve_checkpoint(resume, 'resume')  # a .pth file or a DeepSpeed folder, from any accepted form
    if resume.is_dir() != deepspeed:
        # a plain runner would load a ZeRO folder's weights and silently skip its optimizer state
        written, needed = ('with', 'without') if resume.is_dir() else ('without', 'with')
        raise MMLLaVAError(f'resume: {resume} was written {written} --deepspeed; resume it {written} --deepspeed '
                           f'(to start a run {needed} it from its weights, set load_from and not resume)')
    cfg.resume, cfg.load_from = True, str(resume)


def _checkpoint_hook(default_hooks) -> None:
    from mmllava.engine.checkpoint_hook import CheckpointHook

    hook = (default_hooks or {}).get('checkpoint')
    if isinstance(hook, dict) and _type_name(hook.get('type')) == 'CheckpointHook':
        hook['type'] = _lazy(CheckpointHook)  # crash-safe saving, same arguments


def _visualizer(cfg) -> None:
    """TensorBoard scalars in the work dir unless the config chose its visualizer; a missing
    tensorboard package drops that backend with a warning instead of crashing at start."""
    if cfg.get('visualizer') is None:
        cfg.visualizer = dict(type='Visualizer', vis_backends=[dict(type='LocalVisBackend'),
                                                                 dict(type='TensorboardVisBackend')])
    backends = cfg.visualizer.get('vis_backends') or []
    if any(_type_name(b.get('type')) == 'TensorboardVisBackend' for b in backends):
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            log('tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)', logging.WARNING)
            cfg.visualizer.vis_backends = [b for b in backends
                                           if _type_name(b.get('type')) != 'TensorboardVisBackend']


def _custom_hooks(cfg) -> None:
    from mmllava.engine.console import TrainSummaryHook
    from mmllava.engine.hooks import ThroughputHook

    hooks = list(cfg.get('custom_hooks') or [])
    for hook in (ThroughputHook, TrainSummaryHook):
        if not any(isinstance(h, dict) and _type_name(h.get('type')) == hook.__name__ for h in hooks):
            hooks.append(dict(type=_lazy(hook)))
    cfg.custom_hooks = hooks


def prepare_config(cfg, *, work_dir: str, deepspeed: str | None = None, launcher: str = 'none',
                   resume=None, seed: int | None = None):
    """Return a copy of ``cfg`` ready for ``build_runner`` (see module doc).

    ``resume``: None (as the config says), True (latest checkpoint in ``work_dir``) or a path.
    """
    from mmllava.engine import compat
    from mmllava.engine.launch import single_process_env

    for key in ('model', 'train_dataloader', 'optim_wrapper', 'train_cfg'):
        if cfg.get(key) is None:
            raise MMLLaVAError(f'{cfg.filename}: the config defines no `{key}`, so it cannot train')
    pretrained = cfg.model.get('pretrained_pth') if isinstance(cfg.model, dict) else None
    if isinstance(pretrained, str) and not os.path.exists(pretrained):
        # before the dataset and the model are built: a fine-tune run before its pretrain run
        # stops at once (mmllava.config.with_config_hint names the run that writes it)
        raise MMLLaVAError(f'{pretrained}: checkpoint not found')
    user_cfg, cfg = cfg, copy.deepcopy(cfg)
    # What build_runner writes into the work dir: the config as the user ran it (--cfg-options
    # applied), not this process's rewrite of it (CPU optimizer wrapper, DeepSpeed strategy, launcher),
    # so that `train WORK_DIR/CONFIG.py` with the same options trains the same way again.
    object.__setattr__(cfg, '_user_config', user_cfg)
    cfg.work_dir = work_dir
    cfg.setdefault('experiment_name', f'{os.path.splitext(os.path.basename(cfg.filename or "config"))[0]}'
                                      f'_{uuid.uuid4().hex[:8]}')
    if seed is not None:
        cfg.randomness = {**(cfg.get('randomness') or {}), 'seed': seed}
    _resolve_resume(cfg, resume, deepspeed=bool(deepspeed))
    _checkpoint_hook(cfg.get('default_hooks'))
    _custom_hooks(cfg)
    _visualizer(cfg)
    on_cuda = torch.cuda.is_available()
    if deepspeed:
        from mmllava.engine.deepspeed import DeepSpeedStrategy, resolve_deepspeed_config

        cfg.strategy = dict(type=_lazy(DeepSpeedStrategy), config=resolve_deepspeed_config(deepspeed, cfg),
                            exclude_frozen_parameters=True)
        cfg.optim_wrapper = dict(type='DeepSpeedOptimWrapper', optimizer=cfg.optim_wrapper.optimizer)
        cfg.runner_type = 'FlexibleRunner'
        if launcher == 'none':  # a world of one, initialised like torchrun's, not through MPI
            os.environ.update(single_process_env())
            launcher = 'pytorch'
    else:
        if not on_cuda:
            cfg.optim_wrapper = compat.cpu_optim_wrapper(cfg.optim_wrapper)
            if launcher != 'none' and cfg.get('model_wrapper_cfg') is None:
                cfg.model_wrapper_cfg = compat.cpu_ddp_wrapper(cfg.get('find_unused_parameters', False))
    cfg.launcher = launcher
    return cfg


def build_runner(cfg, verbose: bool = False):
    """Build the mmengine runner for a config from ``prepare_config``. The terminal gets the train
    console (``mmllava.engine.console``); ``verbose`` shows the log file's whole content there too."""
    from mmengine.runner import FlexibleRunner, Runner

    from mmllava.config import build
    from mmllava.engine import compat, console
    from mmllava.engine.machine import format_machine_facts, machine_facts

    compat.apply()
    console.install(verbose)
    runner_type = cfg.get('runner_type', 'Runner')
    runner_cls = {'Runner': Runner, 'FlexibleRunner': FlexibleRunner}.get(_type_name(runner_type))
    if runner_cls is None:
        raise MMLLaVAError(f'runner_type={runner_type!r}: mmllava runs Runner or FlexibleRunner')
    # The dataset is built (tokenised and checked) before the model, so bad data stops the run in
    # seconds with `FILE:INDEX: reason` instead of after minutes of loading weights.
    dataset = build(cfg.train_dataloader.dataset)
    runner = runner_cls.from_cfg(cfg)
    runner._train_dataloader['dataset'] = dataset
    # first in the work dir's log: a result that differs on another machine is matched to its kind
    runner.logger.info(format_machine_facts(machine_facts()))
    _dump_user_config(cfg, runner.work_dir)
    return runner


def _dump_user_config(cfg, work_dir: str) -> None:
    """Replace the config mmengine dumped into ``work_dir`` (the prepared one) with the user's; see
    ``prepare_config``. Its ``vis_data/config.py`` keeps the prepared one."""
    from mmengine.dist import is_main_process

    user_cfg = getattr(cfg, '_user_config', None)
    if user_cfg is not None and cfg.filename is not None and is_main_process():
        user_cfg.dump(os.path.join(work_dir, os.path.basename(cfg.filename)))
