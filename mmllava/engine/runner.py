"""From a loaded config and the ``train`` options to an mmengine runner.

``prepare_config`` sets a config's run settings for this process (work dir, seed, resume,
launcher, DeepSpeed). The shipped configs name what runs (mmllava's checkpoint hook, logging hooks,
TensorBoard visualizer and optimizer wrapper); a config written for XTuner or plain mmengine gets
them substituted, one log line each;
``build_runner`` applies the compatibility layer (``compat``) and builds ``plain_runner.Runner``
or, under DeepSpeed, ``FlexibleRunner``, through their constructors.
"""
from __future__ import annotations

import copy
import logging
import os
import uuid

import torch

from mmllava.checkpoints import resolve_checkpoint
from mmllava.engine.compat import log
from mmllava.errors import MMLLaVAError, PathNotFoundError


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


def _names(obj_type, cls) -> bool:
    """Whether a config's ``type`` is ``cls``: the class itself, or its registry name or import path."""
    return obj_type is cls or obj_type in (cls.__name__, f'{cls.__module__}.{cls.__name__}')


def _substituted(setting: str, old: str, new: str, why: str) -> None:
    """The one log line of a change to the user's config: what, by what, why."""
    log(f'config: {setting}: {old} -> {new} ({why})')


def _checkpoint_hook(default_hooks) -> None:
    from mmengine.hooks import CheckpointHook as MMEngineCheckpointHook

    from mmllava.engine.checkpoint_hook import CheckpointHook

    hook = (default_hooks or {}).get('checkpoint')
    if isinstance(hook, dict) and _names(hook.get('type'), MMEngineCheckpointHook):
        hook['type'] = _lazy(CheckpointHook)
        _substituted('default_hooks.checkpoint', "mmengine's CheckpointHook", 'mmllava.engine.CheckpointHook',
                     'same arguments; a crash while saving leaves last_checkpoint naming a complete checkpoint, '
                     'and the RNG state is saved for an exact --resume')


def _visualizer(cfg) -> None:
    """TensorBoard scalars in the work dir unless the config chose its visualizer; a missing
    tensorboard package drops that backend with a warning instead of crashing at start."""
    from mmengine.visualization import LocalVisBackend, TensorboardVisBackend, Visualizer

    if cfg.get('visualizer') is None:
        cfg.visualizer = dict(type=_lazy(Visualizer), vis_backends=[dict(type=_lazy(LocalVisBackend)),
                                                                    dict(type=_lazy(TensorboardVisBackend))])
        _substituted('visualizer', 'None', 'Visualizer with LocalVisBackend and TensorboardVisBackend',
                     'the loss and lr curves in WORK_DIR/TIMESTAMP/vis_data, for TensorBoard')
    backends = cfg.visualizer.get('vis_backends') or []
    if any(_names(b.get('type'), TensorboardVisBackend) for b in backends):
        try:
            import torch.utils.tensorboard  # noqa: F401
        except ImportError:
            log('tensorboard is not installed: no TensorBoard scalars (pip install tensorboard)', logging.WARNING)
            cfg.visualizer.vis_backends = [b for b in backends if not _names(b.get('type'), TensorboardVisBackend)]


def _custom_hooks(cfg) -> None:
    from mmllava.engine.console import TrainSummaryHook
    from mmllava.engine.hooks import ThroughputHook

    hooks = list(cfg.get('custom_hooks') or [])
    for hook, why in ((ThroughputHook, 'tokens/s and peak memory in the log'),
                      (TrainSummaryHook, "the run's header and summary in the terminal")):
        if not any(isinstance(h, dict) and _names(h.get('type'), hook) for h in hooks):
            hooks.append(dict(type=_lazy(hook)))
            _substituted('custom_hooks', 'no ' + hook.__name__, f'{hook.__name__} added', why)
    cfg.custom_hooks = hooks


def _cpu_optim_wrapper(cfg) -> None:
    from mmengine.optim import AmpOptimWrapper

    from mmllava.engine.wrappers import mixed_precision_optim_wrapper

    if _names(cfg.optim_wrapper.get('type'), AmpOptimWrapper):
        wrapper = copy.deepcopy(cfg.optim_wrapper)  # a deep copy keeps the config's lazy imports unbuilt
        wrapper['type'] = _lazy(mixed_precision_optim_wrapper)
        cfg.optim_wrapper = wrapper
        _substituted('optim_wrapper', "mmengine's AmpOptimWrapper", 'mmllava.engine.mixed_precision_optim_wrapper',
                     'AmpOptimWrapper needs a CUDA device and there is none: plain fp32 steps here, '
                     'AmpOptimWrapper where CUDA is')


def prepare_config(cfg, *, work_dir: str, deepspeed: str | None = None, launcher: str = 'none',
                   resume=None, seed: int | None = None):
    """Return a copy of ``cfg`` ready for ``build_runner`` (see module doc).

    ``resume``: None (as the config says), True (latest checkpoint in ``work_dir``) or a path.
    A shipped config changes only in its run settings (work dir, experiment name, launcher, seed,
    resume and what ``deepspeed`` needs); each change to a config written for XTuner or plain
    mmengine is one log line (``_substituted``).
    """
    from mmllava.engine.launch import single_process_env
    from mmllava.engine.wrappers import cpu_ddp_wrapper

    for key in ('model', 'train_dataloader', 'optim_wrapper', 'train_cfg'):
        if cfg.get(key) is None:
            raise MMLLaVAError(f'{cfg.filename}: the config defines no `{key}`, so it cannot train')
    pretrained = cfg.model.get('pretrained_pth') if isinstance(cfg.model, dict) else None
    if isinstance(pretrained, str) and not os.path.exists(pretrained):
        # before the dataset and the model are built: a fine-tune run before its pretrain run
        # stops at once (mmllava.config_errors.with_config_hint names the run that writes it)
        raise PathNotFoundError(f'{pretrained}: checkpoint not found', setting='pretrained_pth', value=pretrained)
    user_cfg, cfg = cfg, copy.deepcopy(cfg)
    # What build_runner writes into the work dir: the config as the user ran it (--cfg-options
    # applied), not this process's rewrite of it (substitutions, DeepSpeed strategy, launcher),
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
    elif not on_cuda:
        _cpu_optim_wrapper(cfg)
        if launcher != 'none' and cfg.get('model_wrapper_cfg') is None:
            cfg.model_wrapper_cfg = cpu_ddp_wrapper(cfg.get('find_unused_parameters', False))
            _substituted('model_wrapper_cfg', 'None', 'MMDistributedDataParallel with device_ids=None',
                         f'--launcher {launcher} without CUDA: DDP takes no device ids for a model on the CPU')
    cfg.launcher = launcher
    return cfg


def build_runner(cfg, verbose: bool = False):
    """Build the mmengine runner for a config from ``prepare_config``: ``plain_runner.Runner``
    (mmengine's, with checked checkpoint loading and whole-iteration schedule phases) or, under
    DeepSpeed, mmengine's ``FlexibleRunner``. The terminal gets the train console
    (``mmllava.engine.console``); ``verbose`` shows the log file's whole content there too."""
    from mmengine.runner import FlexibleRunner

    from mmllava.config import build
    from mmllava.engine import compat, console
    from mmllava.engine.launch import init_cpu_process_group
    from mmllava.engine.machine import format_machine_facts, machine_facts
    from mmllava.engine.plain_runner import Runner

    compat.apply()
    console.install(verbose)
    runner_type = cfg.get('runner_type', 'Runner')
    runner_cls = {'Runner': Runner, 'FlexibleRunner': FlexibleRunner}.get(_type_name(runner_type))
    if runner_cls is None:
        raise MMLLaVAError(f'runner_type={runner_type!r}: mmllava runs Runner or FlexibleRunner')
    # The dataset is built (tokenised and checked) before the model, so bad data stops the run in
    # seconds with `FILE:INDEX: reason` instead of after minutes of loading weights.
    dataset = build(cfg.train_dataloader.dataset)
    init_cpu_process_group(cfg.get('launcher', 'none'), cfg.get('env_cfg'), deepspeed=runner_cls is FlexibleRunner)
    runner = runner_cls(**_runner_arguments(runner_cls, cfg, dataset))
    # first in the work dir's log: a result that differs on another machine is matched to its kind
    runner.logger.info(format_machine_facts(machine_facts()))
    _dump_user_config(cfg, runner.work_dir)
    return runner


def _runner_arguments(runner_cls, cfg, dataset) -> dict:
    """The runner's constructor arguments, as ``runner_cls.from_cfg(cfg)`` passes them, with the
    built ``dataset`` in ``train_dataloader`` (mmengine's ``build_dataloader`` takes a dataset
    object there). The config itself keeps the dataset's settings: mmengine dumps it to the work
    dir. Keys the config lacks take the constructor's defaults (``from_cfg`` passes the same ones,
    but for FlexibleRunner's ``env_cfg``, which it passes as None: the shipped configs all set it;
    and FlexibleRunner's ``compile``, which its ``from_cfg`` drops, is passed when a config sets it)."""
    import inspect

    cfg = copy.deepcopy(cfg)  # as from_cfg: the runner builds hooks and the rest from these dicts
    parameters = inspect.signature(runner_cls.__init__).parameters
    arguments = {name: cfg[name] for name in parameters if name not in ('self', 'cfg') and name in cfg}
    arguments['train_dataloader'] = {**cfg.train_dataloader, 'dataset': dataset}
    return {**arguments, 'cfg': cfg}


def _dump_user_config(cfg, work_dir: str) -> None:
    """Replace the config mmengine dumped into ``work_dir`` (the prepared one) with the user's; see
    ``prepare_config``. Its ``vis_data/config.py`` keeps the prepared one."""
    from mmengine.dist import is_main_process

    user_cfg = getattr(cfg, '_user_config', None)
    if user_cfg is not None and cfg.filename is not None and is_main_process():
        user_cfg.dump(os.path.join(work_dir, os.path.basename(cfg.filename)))
