"""How training processes start: XTuner's environment convention, torchrun, slurm, single process.

``NPROC_PER_NODE=8 mmllava train ...`` (with ``NNODES``, ``NODE_RANK``, ``ADDR``, ``PORT`` for
several nodes) re-runs the same command under ``torchrun`` with ``--launcher pytorch``, as
``xtuner train`` does. A single process under DeepSpeed still needs the launcher variables, or
DeepSpeed falls back to MPI discovery (and fails without ``mpi4py``).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

from mmllava.errors import MMLLaVAError


def free_port() -> int:
    """A TCP port free on this host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def single_process_env() -> dict[str, str]:
    """Launcher variables for a world of one (values already in the environment win)."""
    env = {'RANK': '0', 'LOCAL_RANK': '0', 'WORLD_SIZE': '1', 'MASTER_ADDR': '127.0.0.1'}
    env = {k: os.environ.get(k, v) for k, v in env.items()}
    env['MASTER_PORT'] = os.environ.get('MASTER_PORT') or str(free_port())
    return env


def slurm_env(port: int | None = None) -> dict[str, str]:
    """torch.distributed variables from ``SLURM_*`` (what mmengine's slurm init sets, minus CUDA)."""
    node_list = os.environ['SLURM_NODELIST']
    addr = os.environ.get('MASTER_ADDR') or subprocess.getoutput(
        f'scontrol show hostname {node_list} | head -n1').strip()
    return {'RANK': os.environ['SLURM_PROCID'], 'WORLD_SIZE': os.environ['SLURM_NTASKS'],
            'LOCAL_RANK': os.environ.get('SLURM_LOCALID', '0'), 'MASTER_ADDR': addr,
            'MASTER_PORT': str(port or os.environ.get('MASTER_PORT', 29500))}


def init_cpu_process_group(launcher: str, env_cfg: dict | None, deepspeed: bool) -> None:
    """Without CUDA, start the process group of a ``pytorch`` or ``slurm`` launch before the runner:
    gloo, whatever backend ``env_cfg.dist_cfg`` names, and no device call.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` (AttributeError on a CPU build) and
    uses the config's ``nccl``; its runner and strategies skip ``init_dist`` when the group
    exists. ``deepspeed``: through ``deepspeed.init_distributed``, as mmengine's DeepSpeed
    strategy starts it. Other launchers (``none``, ``mpi``) are left to mmengine.
    """
    import datetime

    import torch

    if torch.cuda.is_available() or launcher not in ('pytorch', 'slurm'):
        return
    if torch.distributed.is_initialized():
        return
    dist_cfg = dict((env_cfg or {}).get('dist_cfg') or {})
    backend = dist_cfg.pop('backend', 'nccl')
    port = dist_cfg.pop('port', None)
    if dist_cfg.get('timeout') is not None:  # seconds in the config, as mmengine's init_dist reads it
        dist_cfg['timeout'] = datetime.timedelta(seconds=dist_cfg['timeout'])
    if launcher == 'slurm':
        os.environ.update(slurm_env(port))
    if backend != 'gloo':
        from mmengine.logging import print_log

        print_log(f'no CUDA device: using the gloo backend instead of {backend}', logger='current')
    if deepspeed:
        import deepspeed as ds

        ds.init_distributed(dist_backend='gloo', **dist_cfg)
    else:
        torch.distributed.init_process_group(backend='gloo', **dist_cfg)


def _int_env(name: str, default: int) -> int:
    value = os.environ.get(name, '')
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise MMLLaVAError(f'{name}={value!r}: expected an integer') from None


def torchrun_command(train_argv: list[str]) -> list[str] | None:
    """The ``torchrun`` command asked for by ``NPROC_PER_NODE``/``NNODES``, or None for one process.

    ``train_argv`` are the ``train`` verb's arguments; ``--launcher pytorch`` is appended. Inside
    a torchrun worker (``TORCHELASTIC_RUN_ID`` set) this is always None.
    """
    if 'TORCHELASTIC_RUN_ID' in os.environ:
        return None
    nproc, nnodes = _int_env('NPROC_PER_NODE', 1), _int_env('NNODES', 1)
    if nproc <= 1 and nnodes <= 1:
        return None
    port = os.environ.get('PORT') or (str(free_port()) if nnodes == 1 else '29500')
    return [sys.executable, '-m', 'torch.distributed.run', f'--nproc_per_node={nproc}', f'--nnodes={nnodes}',
            f'--node_rank={_int_env("NODE_RANK", 0)}', f'--master_addr={os.environ.get("ADDR", "127.0.0.1")}',
            f'--master_port={port}', '-m', 'mmllava.cli', 'train', *train_argv, '--launcher', 'pytorch']


LAUNCHER_VARIABLES = ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')


@contextlib.contextmanager
def in_process_world():
    """Around training in this process (``mmllava train``/``bench`` called as functions: tests,
    notebooks): afterwards the process group is closed, with DeepSpeed's references to its groups,
    and the launcher variables that a world of one (``single_process_env``) or slurm set are put
    back as they were, so the caller can train again, in-process or in a subprocess."""
    saved = {key: os.environ.get(key) for key in LAUNCHER_VARIABLES}
    try:
        yield
    finally:
        _close_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _close_process_group() -> None:
    """Destroy the process group (and free its TCP port). Through DeepSpeed when it made the group:
    DeepSpeed caches its groups and would hand the dead ones to the next engine."""
    # torch is imported by the training processes only, not by `mmllava train` re-running itself under torchrun
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    ds_comm = sys.modules.get('deepspeed.comm.comm')
    if ds_comm is not None and ds_comm.cdb is not None and ds_comm.cdb.is_initialized():
        ds_comm.destroy_process_group()
    else:
        dist.destroy_process_group()
