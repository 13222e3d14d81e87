"""What a checkpoint must carry besides weights to continue a run exactly: sampler position and RNG.

mmengine restores step, optimizer and schedulers, but its iteration-based loop re-reads (loads,
decodes, collates) every batch already trained to find its place, and it keeps no RNG state, so
dropout after a resume differs from the uninterrupted run. ``ResumableSampler`` skips indices
without loading them; ``get_rng_state``/``set_rng_state`` move the generators as plain data.
"""
from __future__ import annotations

import itertools
import random

import numpy as np
import torch
from mmengine.registry import DATA_SAMPLERS
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    """Wrap a sampler so that its next pass can start ``n`` indices in (mid-epoch resume).

    ``sampler`` is a sampler or an mmengine sampler config (built with this ``dataset``/``seed``,
    like mmengine builds ``train_dataloader.sampler``). Lengths and ``set_epoch`` pass through;
    ``skip(n)`` applies to the next ``__iter__`` only.
    """

    def __init__(self, sampler, dataset=None, seed=None):
        if isinstance(sampler, dict):
            sampler = DATA_SAMPLERS.build(sampler, default_args=dict(dataset=dataset, seed=seed))
        self.sampler = sampler
        self._skip = 0

    def skip(self, num_indices: int) -> None:
        """Start the next pass ``num_indices`` indices in."""
        self._skip = num_indices

    def reseed(self, seed: int) -> None:
        """Use ``seed`` for the order (a resumed run must replay the original run's shuffle)."""
        if hasattr(self.sampler, 'seed') and seed is not None:
            self.sampler.seed = seed

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, 'set_epoch'):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        skip, self._skip = self._skip, 0
        return itertools.islice(iter(self.sampler), skip, None)

    def __len__(self) -> int:
        return len(self.sampler)


def get_rng_state() -> dict:
    """Python, numpy, torch (and CUDA) generator states as tensors and plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {'python': random.getstate(), 'torch': torch.get_rng_state(),
             'numpy': {'kind': kind, 'keys': keys.tolist(), 'pos': int(pos), 'has_gauss': int(has_gauss),
                       'cached_gaussian': float(cached)}}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``get_rng_state`` returned (CUDA states only where CUDA is present)."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state['numpy']
    np.random.set_state((numpy_state['kind'], np.asarray(numpy_state['keys'], dtype=np.uint32), numpy_state['pos'],
                         numpy_state['has_gauss'], numpy_state['cached_gaussian']))
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])
