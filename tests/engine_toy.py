"""A toy model, dataset and XTuner-style config for the engine tests: seconds per run, no weights.

The model has dropout (so resume must restore the RNG) and its loss is a per-sample mean with
equal weight per sample, so the mean of per-rank losses equals the single-process loss of the
same global batch. ``LossRecorderHook`` writes every iteration's loss to ``losses_rank{R}.json``.
Configs import this module as ``engine_toy`` (tests put this folder on ``PYTHONPATH``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel

from mmllava.errors import MMLLaVAError

TESTS_DIR = Path(__file__).resolve().parent


class ToyModel(BaseModel):
    def __init__(self, dim: int = 8, hidden: int = 32, dropout: float = 0.2):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Dropout(dropout),
                                       torch.nn.Linear(hidden, 1))

    def forward(self, data, data_samples=None, mode='loss'):
        prediction = self.net(data['x'])
        if mode == 'loss':
            return {'loss': torch.nn.functional.mse_loss(prediction, data['y'])}
        return prediction


class ToyDataset(torch.utils.data.Dataset):
    """``data_path`` is a JSON file ``{"num_samples": N, "seed": S}``; samples are fixed by it."""

    def __init__(self, data_path: str, dim: int = 8):
        if not os.path.isfile(data_path):
            raise MMLLaVAError(f'data file not found: {data_path}')
        spec = json.loads(Path(data_path).read_text())
        generator = torch.Generator().manual_seed(spec['seed'])
        self.x = torch.randn(spec['num_samples'], dim, generator=generator)
        self.y = self.x.sum(dim=1, keepdim=True).sin()
        self.modality_length = [4] * spec['num_samples']  # all "with image", equal length

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {'x': self.x[index], 'y': self.y[index]}


def toy_collate(instances):
    x = torch.stack([i['x'] for i in instances])
    return {'data': {'x': x, 'y': torch.stack([i['y'] for i in instances]),
                     'attention_mask': torch.ones(len(x), 4, dtype=torch.long)}, 'data_samples': None}


class LossRecorderHook(Hook):
    """Append ``[iter, loss]`` per iteration to ``work_dir/losses_rank{R}.json`` (rewritten each time)."""

    priority = 'LOWEST'

    def before_train(self, runner):
        self.path = Path(runner.work_dir) / f'losses_rank{runner.rank}.json'
        self.losses = json.loads(self.path.read_text()) if self.path.is_file() else []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append([runner.iter + 1, float(outputs['loss'].detach())])
        self.path.write_text(json.dumps(self.losses))


class CrashHook(Hook):
    """Raise at iteration ``at`` (1-based): a training crash."""

    def __init__(self, at: int | None):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.at is not None and runner.iter + 1 == self.at:
            raise RuntimeError(f'simulated crash at iteration {self.at}')


CONFIG = '''
from mmengine.hooks import CheckpointHook, DistSamplerSeedHook, IterTimerHook, LoggerHook, ParamSchedulerHook
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR
from torch.optim import AdamW

from engine_toy import CrashHook, LossRecorderHook, ToyDataset, ToyModel, toy_collate
from mmllava.data import LengthGroupedSampler
from mmllava.engine import TrainLoop

data_root = {data_root!r}
data_path = data_root + 'toy.json'
batch_size = {batch_size}
accumulative_counts = 1
dataloader_num_workers = 0
max_epochs = {max_epochs}
optim_type = AdamW
lr = 1e-2
betas = (0.9, 0.999)
weight_decay = 0
max_norm = 1
warmup_ratio = 0.1
save_steps = {save_steps}
save_total_limit = {save_total_limit}
crash_at = None  # --cfg-options crash_at=N: raise at iteration N

model = dict(type=ToyModel)
train_dataloader = dict(
    batch_size=batch_size, num_workers=dataloader_num_workers, pin_memory=False,
    persistent_workers=dataloader_num_workers > 0,
    dataset=dict(type=ToyDataset, data_path=data_path),
    sampler=dict(type=LengthGroupedSampler, length_property='modality_length', per_device_batch_size=batch_size),
    collate_fn=dict(type=toy_collate))
optim_wrapper = dict(
    type=AmpOptimWrapper, optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False), accumulative_counts=accumulative_counts,
    loss_scale='dynamic', dtype='bfloat16')
param_scheduler = [
    dict(type=LinearLR, start_factor=1e-5, by_epoch=True, begin=0, end=warmup_ratio * max_epochs,
         convert_to_iter_based=True),
    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=True, begin=warmup_ratio * max_epochs, end=max_epochs,
         convert_to_iter_based=True)]
train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)
custom_hooks = [dict(type=LossRecorderHook), dict(type=CrashHook, at=crash_at)]
default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=1),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(type=CheckpointHook, by_epoch=False, interval=save_steps, max_keep_ckpts=save_total_limit),
    sampler_seed=dict(type=DistSamplerSeedHook))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
visualizer = None
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
log_processor = dict(by_epoch=False)
'''


def write_toy_config(folder: Path, *, num_samples: int = 24, batch_size: int = 4, max_epochs: int = 2,
                     save_steps: int = 4, save_total_limit: int = 2) -> Path:
    """Write ``toy.json`` and ``toy_config.py`` into ``folder``; return the config path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'toy.json').write_text(json.dumps({'num_samples': num_samples, 'seed': 0}))
    path = folder / 'toy_config.py'
    path.write_text(CONFIG.format(data_root=f'{folder}/', batch_size=batch_size, max_epochs=max_epochs,
                                  save_steps=save_steps, save_total_limit=save_total_limit))
    return path


def train_env(**extra: str) -> dict:
    """Environment for ``mmllava train`` subprocesses that import ``engine_toy``."""
    env = dict(os.environ, **extra)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get('PYTHONPATH')) if p)
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


def run_train(*args, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    """``mmllava train ARGS`` in a subprocess (``train_env()`` unless ``env`` is given)."""
    return subprocess.run([sys.executable, '-m', 'mmllava.cli', 'train', *map(str, args)], cwd=cwd,
                          env=env or train_env(), capture_output=True, text=True, timeout=300)


def read_losses(work_dir: Path, rank: int = 0) -> list[list[float]]:
    return json.loads((work_dir / f'losses_rank{rank}.json').read_text())
