"""``TrainLoop``: XTuner's iteration-based training loop (``max_epochs`` or ``max_iters``), resumable.

Differences from mmengine's ``IterBasedTrainLoop`` (which XTuner's ``TrainLoop`` extends):
a resumed run starts mid-epoch by skipping sampler indices (no batch is loaded to be thrown
away) and restores the RNG saved with the checkpoint, so its losses equal the uninterrupted
run's; no 2 s sleep at every epoch boundary; ``runner.epoch`` counts real passes over the data
and the epoch hooks run around each pass (epoch-based schedulers and checkpoints work); logged
scalars are averaged over ranks; the dataloader's workers are seeded as mmengine seeds them and
share tensors by file name (``with_worker_init``, through mmengine's ``worker_init_fn`` key).
"""
from __future__ import annotations

import copy
import logging

import torch
from mmengine.dist import all_reduce, get_world_size
from mmengine.logging import print_log
from mmengine.registry import FUNCTIONS, LOOPS
from mmengine.runner.base_loop import BaseLoop

from mmllava.engine.resume import ResumableSampler, set_rng_state
from mmllava.errors import MMLLaVAError


def _resumable_dataloader_cfg(dataloader: dict) -> dict:
    """Wrap ``dataloader.sampler`` in ``ResumableSampler`` (a config-level change, before building)."""
    dataloader = copy.copy(dataloader)
    sampler = dataloader.get('sampler')
    if isinstance(sampler, dict) and 'batch_sampler' not in dataloader:
        dataloader['sampler'] = dict(type=ResumableSampler, sampler=sampler)
    return dataloader


WORKER_INIT = 'mmllava_seeded_worker_init_sharing_by_name'  # no dot: a registry reads 'a.b' as scope a


@FUNCTIONS.register_module(name=WORKER_INIT)
def seeded_worker_init_sharing_by_name(worker_id: int, num_workers: int, rank: int, seed: int,
                                       disable_subprocess_warning: bool = False) -> None:
    """mmengine's worker init (seeds), then ``file_system`` tensor sharing (see ``with_worker_init``).

    Module level, so that it pickles for ``spawn`` workers.
    """
    from mmengine.dataset import worker_init_fn

    worker_init_fn(worker_id, num_workers, rank, seed, disable_subprocess_warning)
    torch.multiprocessing.set_sharing_strategy('file_system')


def with_worker_init(dataloader: dict, seed: int | None, rank: int) -> dict:
    """``dataloader`` with a ``worker_init_fn`` (mmengine's config key) that seeds each worker as
    mmengine's default does (same arguments), then has it share tensors by file name.

    With torch's default ``file_descriptor`` sharing, the main process fetches each storage of a
    worker's batch over a socket from the worker, which answers when it gets the GIL back from
    decoding the next batch: 2.5 ms a batch, 6% of a tiny-config step (docs/benchmarks.md). With
    ``file_system`` torch's shm manager removes the files when both sides are gone. Only the
    workers change strategy: the main process keeps its own. A config's own ``worker_init_fn`` wins;
    with no seed, mmengine sets no worker init and neither does this.
    """
    if seed is None or 'worker_init_fn' in dataloader:
        return dataloader
    dataloader = copy.copy(dataloader)
    # mmengine pops this key only when it builds its default worker init (a DataLoader rejects it)
    quiet = dataloader.pop('disable_subprocess_warning', False)
    dataloader['worker_init_fn'] = dict(type=WORKER_INIT, num_workers=dataloader.get('num_workers'), rank=rank,
                                        seed=seed, disable_subprocess_warning=quiet)
    return dataloader


@LOOPS.register_module()
class TrainLoop(BaseLoop):
    """Train for ``max_iters`` iterations, or ``max_epochs`` passes over ``dataloader`` (exactly one).

    Use in a config as ``train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)``. Validation
    loops are not run (the configs evaluate with ``EvaluateChatHook``).
    """

    def __init__(self, runner, dataloader, max_iters: int | None = None, max_epochs: float | None = None):
        if (max_iters is None) == (max_epochs is None):
            raise MMLLaVAError('train_cfg: give exactly one of max_iters and max_epochs', setting='train_cfg')
        if isinstance(dataloader, dict):
            dataloader = with_worker_init(_resumable_dataloader_cfg(dataloader), runner.seed, runner.rank)
        super().__init__(runner, dataloader)
        if len(self.dataloader) == 0:
            raise MMLLaVAError('the training dataloader is empty (no samples, or fewer than one batch)')
        if max_iters is not None:
            if int(max_iters) != max_iters or max_iters < 1:
                raise MMLLaVAError(f'train_cfg.max_iters must be a positive integer, got {max_iters!r}',
                                   setting='train_cfg')
            self._max_iters = int(max_iters)
        else:
            self._max_iters = max(1, round(max_epochs * len(self.dataloader)))
        self._max_epochs = -(-self._max_iters // len(self.dataloader))
        self._epoch = 0
        self._iter = 0
        self.stop_training = False  # set by EarlyStoppingHook-like hooks

    @property
    def max_epochs(self) -> int:
        return self._max_epochs

    @property
    def max_iters(self) -> int:
        return self._max_iters

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def iter(self) -> int:
        return self._iter

    def run(self):
        """Train the iterations left: ``before/after_train_epoch`` hooks around each pass over the
        data (a resumed or a last, cut-short pass included), ``before/after_train`` around all."""
        self.runner.call_hook('before_train')
        resuming = self._iter > 0
        while self._iter < self._max_iters and not self.stop_training:
            self._epoch = self._iter // len(self.dataloader)
            self.runner.call_hook('before_train_epoch')
            for data_batch in self._epoch_batches(resuming):
                _ensure_training(self.runner.model)
                self.run_iter(data_batch)
                if self._iter >= self._max_iters or self.stop_training:
                    break
            resuming = False
            self.runner.call_hook('after_train_epoch')
        self._epoch = self._iter // len(self.dataloader)
        self.runner.call_hook('after_train')
        return self.runner.model

    def run_iter(self, data_batch) -> None:
        """One optimisation step on ``data_batch``, between the iteration hooks."""
        self.runner.call_hook('before_train_iter', batch_idx=self._iter, data_batch=data_batch)
        outputs = self.runner.model.train_step(data_batch, optim_wrapper=self.runner.optim_wrapper)
        outputs = _mean_over_ranks(outputs)
        self.runner.call_hook('after_train_iter', batch_idx=self._iter, data_batch=data_batch, outputs=outputs)
        self._iter += 1

    def _epoch_batches(self, resuming: bool):
        """The batches left in the current epoch. Resuming, the position is reached by skipping
        sampler indices, then the checkpoint's RNG state is restored (see module doc)."""
        offset = self._iter % len(self.dataloader)
        sampler = getattr(self.dataloader, 'sampler', None)
        rng_state = self.runner.message_hub.get_info('rng_state') if resuming else None
        if resuming:
            print_log(f'resuming at epoch {self._epoch}, batch {offset} of {len(self.dataloader)}', logger='current')
            if isinstance(sampler, ResumableSampler):
                sampler.reseed(self.runner.seed)
                sampler.skip(offset * self.dataloader.batch_size)
        self._set_epoch(self._epoch)
        if rng_state is not None and offset == 0:
            set_rng_state(rng_state)  # the uninterrupted run drew from it when it started this epoch
        iterator = iter(self.dataloader)
        if offset and not isinstance(sampler, ResumableSampler):
            print_log('the sampler cannot skip: re-reading the batches already trained', logger='current',
                      level=logging.WARNING)
            for _ in range(offset):
                next(iterator)
        if rng_state is not None and offset:
            set_rng_state(rng_state)  # mid-epoch: the uninterrupted run made no new iterator here
        return iterator

    def _set_epoch(self, epoch: int) -> None:
        sampler = getattr(self.dataloader, 'sampler', None)
        if hasattr(sampler, 'set_epoch'):
            sampler.set_epoch(epoch)
        elif hasattr(getattr(self.dataloader, 'batch_sampler', None), 'set_epoch'):
            self.dataloader.batch_sampler.set_epoch(epoch)


def _ensure_training(model) -> None:
    """``model.train()`` unless it is training already: the call walks every submodule (0.5 ms a
    step on the tiny model), while only a hook that evaluated leaves the model in eval mode.
    DeepSpeed's engine keeps its own flag at True, so the flag is read on the wrapped module."""
    if not getattr(model, 'module', model).training:
        model.train()


def _mean_over_ranks(outputs):
    """Average the scalar tensors a train step logs over ranks (rank 0 logs the run, not its shard)."""
    if get_world_size() == 1 or not isinstance(outputs, dict):
        return outputs
    keys = [k for k, v in outputs.items() if isinstance(v, torch.Tensor) and v.numel() == 1]
    if not keys:
        return outputs
    values = torch.stack([outputs[k].detach().float().reshape(()) for k in keys])
    all_reduce(values, op='mean')
    return {**outputs, **dict(zip(keys, values))}
