"""What mmengine 0.10.7 (its last release) gets wrong with today's torch and DeepSpeed, fixed in one place.

``apply()`` installs every fix once per process; ``mmllava.engine.runner.build_runner`` calls it
before anything is built. Each fix names the upstream breakage it answers (see
``/work/shared/STACK_NOTES.md``). Config-level fixes (``AmpOptimWrapper`` on CPU, DDP on CPU) are
functions of the config, applied by ``runner.py``.
"""
from __future__ import annotations

import copy
import logging
import math
import os

import torch

_APPLIED = False


def apply() -> None:
    """Install the process-wide fixes (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _patch_deepspeed_optimizer_registration()
    _patch_cpu_dist_init()
    _patch_checkpoint_loading()
    _patch_deepspeed_cpu_comm()
    _patch_scheduler_epoch_conversion()
    _patch_worker_tensor_sharing()
    _APPLIED = True


def log(message: str, level: int = logging.INFO) -> None:
    """A line in the current mmengine log (console and the run's log file)."""
    from mmengine.logging import print_log

    print_log(message, logger='current', level=level)


# --- DeepSpeed 0.19 removed deepspeed.runtime.fp16.onebit -------------------------------------
def _patch_deepspeed_optimizer_registration() -> None:
    """``DeepSpeedStrategy.__init__`` calls ``register_deepspeed_optimizers``, which imports
    ``deepspeed.runtime.fp16.onebit`` (gone in DeepSpeed 0.19) -> ImportError. Register only the
    DeepSpeed optimizers that still exist."""
    import mmengine._strategy.deepspeed as mm_deepspeed
    from mmengine.registry import OPTIMIZERS

    candidates = (('deepspeed.ops.adam', 'DeepSpeedCPUAdam'), ('deepspeed.ops.adam', 'FusedAdam'),
                  ('deepspeed.ops.lamb', 'FusedLamb'), ('deepspeed.runtime.fp16.onebit', 'OnebitAdam'),
                  ('deepspeed.runtime.fp16.onebit', 'OnebitLamb'), ('deepspeed.runtime.fp16.onebit', 'ZeroOneAdam'))

    def register_deepspeed_optimizers() -> list[str]:
        import importlib

        registered = []
        for module, name in candidates:
            try:
                cls = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue
            if OPTIMIZERS.get(name) is None:
                OPTIMIZERS.register_module(module=cls)
            registered.append(name)
        return registered

    mm_deepspeed.register_deepspeed_optimizers = register_deepspeed_optimizers


# --- init_dist calls torch.cuda.set_device on CPU builds ---------------------------------------
def _patch_cpu_dist_init() -> None:
    """``mmengine.dist.init_dist('pytorch'|'slurm')`` calls ``torch.cuda.set_device`` (AttributeError
    on a CPU build) and passes the config's ``nccl`` backend. Without CUDA: no device call, ``gloo``."""
    import mmengine.dist.utils as dist_utils

    cuda_pytorch, cuda_slurm = dist_utils._init_dist_pytorch, dist_utils._init_dist_slurm

    def init_dist_pytorch(backend, init_backend='torch', **kwargs):
        if torch.cuda.is_available():
            return cuda_pytorch(backend, init_backend=init_backend, **kwargs)
        _init_cpu_process_group(backend, init_backend, **kwargs)

    def init_dist_slurm(backend, port=None, init_backend='torch', **kwargs):
        if torch.cuda.is_available():
            return cuda_slurm(backend, port=port, init_backend=init_backend, **kwargs)
        from mmllava.engine.launch import slurm_env

        os.environ.update(slurm_env(port))
        _init_cpu_process_group(backend, init_backend, **kwargs)

    dist_utils._init_dist_pytorch = init_dist_pytorch
    dist_utils._init_dist_slurm = init_dist_slurm


def _init_cpu_process_group(backend: str, init_backend: str, **kwargs) -> None:
    if backend != 'gloo':
        log(f'no CUDA device: using the gloo backend instead of {backend}')
    if init_backend == 'deepspeed':
        import deepspeed

        deepspeed.init_distributed(dist_backend='gloo', **kwargs)
    else:
        torch.distributed.init_process_group(backend='gloo', **kwargs)


# --- torch.load defaults to weights_only=True -------------------------------------------------
def _patch_checkpoint_loading() -> None:
    """mmengine's local checkpoint loader calls ``torch.load(filename)``; since torch 2.6 that means
    ``weights_only=True`` and our own ``iter_N.pth`` (message hub, numpy history) fails with
    UnpicklingError. Load local files with an allow-list of exactly what our checkpoints hold,
    never with unrestricted unpickling (``mmllava.checkpoints.load_checkpoint_file``), and
    check the weights against the model before mmengine's non-strict load (``load_checkpoint_to_model``)."""
    from mmengine.runner import runner
    from mmengine.runner.checkpoint import CheckpointLoader

    from mmllava.checkpoints import load_checkpoint_file, load_checkpoint_to_model

    CheckpointLoader.register_scheme(prefixes='', loader=load_checkpoint_file, force=True)
    runner._load_checkpoint_to_model = load_checkpoint_to_model  # Runner.load_checkpoint's (load_from, resume)


# --- DeepSpeed JIT-builds its shm all-reduce op on CPU -----------------------------------------
def _patch_deepspeed_cpu_comm() -> None:
    """On the CPU accelerator DeepSpeed's ``TorchBackend`` JIT-compiles ``deepspeed_shm_comm``
    (about 150 s on a fresh machine) at every ``init_distributed``, but only its inference
    all-reduce uses it; training collectives go through ``torch.distributed`` (gloo). Skip the
    build on CPU; ``MMLLAVA_DS_SHM_COMM=1`` keeps it."""
    if torch.cuda.is_available() or os.environ.get('MMLLAVA_DS_SHM_COMM') == '1':
        return
    try:
        import importlib

        ds_comm_torch = importlib.import_module('deepspeed.comm.torch')
    except ImportError:
        return
    ds_comm_torch.build_shm_op = lambda: None


# --- fractional warm-up rounds to 0 or 1 iterations --------------------------------------------
def scheduler_boundary_iters(epochs: float, epoch_length: int) -> int:
    """Iteration of an epoch-based scheduler boundary: rounded up, and at least 2 when positive.

    mmengine truncates (``int(0.03 * 40) == 1``): a one-iteration ``LinearLR`` warm-up never
    leaves ``start_factor`` and the cosine phase that follows scales that ~0 lr for the whole
    run (XTuner's lr stays at 2e-9); below one iteration it raises ``end should be larger than
    begin``. Two iterations let a warm-up start low and reach the base lr.
    """
    if epochs <= 0:
        return 0
    return max(2, math.ceil(epochs * epoch_length - 1e-6))


def _patch_scheduler_epoch_conversion() -> None:
    """Round ``convert_to_iter_based`` boundaries with ``scheduler_boundary_iters`` before
    mmengine converts them (all phases use the same rule, so they still meet)."""
    from mmengine.optim.scheduler.param_scheduler import INF
    from mmengine.registry import PARAM_SCHEDULERS

    original = PARAM_SCHEDULERS.build_func

    def build_scheduler(cfg, registry, default_args=None):
        epoch_length = (default_args or {}).get('epoch_length') or cfg.get('epoch_length')
        if cfg.get('convert_to_iter_based') and cfg.get('by_epoch', True) and epoch_length:
            cfg = cfg.copy()
            begin = scheduler_boundary_iters(cfg.get('begin', 0), epoch_length)
            iters = {'begin': begin}
            if cfg.get('end', INF) != INF:
                # a phase squeezed out by a tiny run must stay valid (mmengine raises on end <= begin)
                iters['end'] = max(scheduler_boundary_iters(cfg['end'], epoch_length), begin + 1)
            for key, value in iters.items():
                # +0.5 so mmengine's int(x * epoch_length) lands exactly on the chosen iteration
                cfg[key] = (value + 0.5) / epoch_length
        return original(cfg, registry, default_args)

    PARAM_SCHEDULERS.build_func = build_scheduler


# --- a worker's batch costs the main process one socket round trip per tensor ------------------
def _patch_worker_tensor_sharing() -> None:
    """With torch's default ``file_descriptor`` sharing, the main process fetches each storage of a
    worker's batch over a socket from the worker, which answers when it gets the GIL back from
    decoding the next batch: 2.5 ms a batch, 6% of a tiny-config step (docs/benchmarks.md). The
    workers that mmengine's runner seeds share by file name instead (``file_system``; torch's shm
    manager removes the files when both sides are gone). Only the workers change strategy: the main
    process keeps its own."""
    import mmengine.runner._flexible_runner as mm_flexible_runner
    import mmengine.runner.runner as mm_runner

    for runner_module in (mm_runner, mm_flexible_runner):  # Runner, and FlexibleRunner (DeepSpeed)
        runner_module.default_worker_init_fn = seeded_worker_init_sharing_by_name


def seeded_worker_init_sharing_by_name(worker_id: int, num_workers: int, rank: int, seed: int,
                                       disable_subprocess_warning: bool = False) -> None:
    """mmengine's worker init (seeds), then ``file_system`` sharing (module level: picklable for spawn)."""
    from mmengine.dataset import worker_init_fn

    worker_init_fn(worker_id, num_workers, rank, seed, disable_subprocess_warning)
    torch.multiprocessing.set_sharing_strategy('file_system')


# --- config-level fixes -----------------------------------------------------------------------
def cpu_optim_wrapper(optim_wrapper):
    """``AmpOptimWrapper`` asserts a CUDA/NPU/MLU device: on CPU use ``OptimWrapper`` (fp32 math;
    the model keeps whatever dtype it was built in). Returns a copy; other wrappers pass through."""
    wrapper_type = optim_wrapper.get('type')
    name = wrapper_type if isinstance(wrapper_type, str) else getattr(wrapper_type, '__name__', '')
    if name != 'AmpOptimWrapper':
        return optim_wrapper
    converted = copy.deepcopy(optim_wrapper)  # a deep copy keeps the config's lazy imports unbuilt
    for key in ('loss_scale', 'dtype', 'use_fsdp'):
        converted.pop(key, None)
    converted['type'] = 'OptimWrapper'
    log('no CUDA device: AmpOptimWrapper -> OptimWrapper (fp32)')
    return converted


def cpu_ddp_wrapper(find_unused_parameters: bool = False) -> dict:
    """mmengine wraps a distributed model in DDP with ``device_ids=[LOCAL_RANK]``, which DDP rejects
    for CPU modules; ``device_ids=None`` is the CPU form."""
    return dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                find_unused_parameters=find_unused_parameters)
