"""The optimizer and model wrappers a config names, where mmengine's own need a CUDA device.

mmengine's ``AmpOptimWrapper`` (autocast plus gradient scaling) asserts a CUDA / NPU / MLU / MUSA
device when it is built, so a config naming it cannot train on a CPU. The shipped configs name
``mixed_precision_optim_wrapper`` instead: the same arguments, ``AmpOptimWrapper`` where CUDA is,
mmengine's plain ``OptimWrapper`` (fp32 steps; the model keeps the dtype it was built in) where it
is not. mmengine wraps a distributed model in DDP with ``device_ids=[LOCAL_RANK]``, which DDP
rejects for a model on the CPU: ``cpu_ddp_wrapper`` is the CPU form of that wrapper's config.
"""
from __future__ import annotations

import torch
from mmengine.optim import AmpOptimWrapper, OptimWrapper

AMP_ARGUMENTS = ('loss_scale', 'dtype', 'use_fsdp')  # what OptimWrapper does not take


def mixed_precision_optim_wrapper(**kwargs) -> OptimWrapper:
    """``AmpOptimWrapper(**kwargs)`` with a CUDA device, else ``OptimWrapper`` without its AMP arguments."""
    if torch.cuda.is_available():
        return AmpOptimWrapper(**kwargs)
    return OptimWrapper(**{key: value for key, value in kwargs.items() if key not in AMP_ARGUMENTS})


def autocast_dtype(optim_wrapper: dict) -> torch.dtype | None:
    """The dtype the forward pass is autocast to by the optimizer wrapper of a config, on this
    machine; None for none (fp32). ``AmpOptimWrapper`` without a ``dtype`` autocasts to float16."""
    wrapper_type = optim_wrapper.get('type')
    amp = (wrapper_type in (AmpOptimWrapper, 'AmpOptimWrapper')
           or (wrapper_type is mixed_precision_optim_wrapper and torch.cuda.is_available()))
    if not amp:
        return None
    dtype = optim_wrapper.get('dtype') or 'float16'
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def cpu_ddp_wrapper(find_unused_parameters: bool = False) -> dict:
    """``model_wrapper_cfg`` for a distributed run on CPUs: mmengine's DDP wrapper with
    ``device_ids=None`` (its default config passes the CUDA device id ``LOCAL_RANK``)."""
    return dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                find_unused_parameters=find_unused_parameters)
