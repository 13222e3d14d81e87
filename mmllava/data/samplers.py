"""``LengthGroupedSampler``: batches of similar length, images and text-only kept apart.

Like XTuner's / LLaVA's: shuffle each modality, cut it into mega-batches, sort each mega-batch by
length and slice it into global batches (``per_device_batch_size * world_size``), then shuffle
the global batches. Unlike them, a modality's last global batch is filled up with other samples
of the same modality, so no global batch mixes images and text-only samples (a rank with only
text-only samples while others have images is how multi-GPU runs hang).
"""
from __future__ import annotations

import math
from typing import Iterator

import torch
from mmengine.dist import get_dist_info, sync_random_seed
from torch.utils.data import Sampler


def _modality_batches(indices: list[int], lengths: list[int], batch: int, mega: int,
                      generator: torch.Generator) -> list[list[int]]:
    """Global batches of one modality: mega-batches sorted by length, the tail filled up."""
    if not indices:
        return []
    order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
    shortfall = -len(order) % batch
    fill = torch.randint(len(indices), (shortfall,), generator=generator).tolist()
    order += [indices[i] for i in fill]
    batches = []
    for start in range(0, len(order), mega):
        megabatch = sorted(order[start:start + mega], key=lambda i: abs(lengths[i]), reverse=True)
        batches += [megabatch[i:i + batch] for i in range(0, len(megabatch), batch)]
    return batches


class LengthGroupedSampler(Sampler):
    """Yield this rank's indices of ``dataset``, grouped by ``length_property`` (see module doc).

    ``dataset.<length_property>`` is a list of ints: positive for samples with an image, negative
    for text-only ones. ``mega_batch_mult`` defaults to min(50, len // (4 * global batch)) as in
    XTuner. The order depends only on ``seed`` and the epoch (``set_epoch``); ``seed=None`` draws
    one seed shared by all ranks. In an mmengine config: ``sampler=dict(type=LengthGroupedSampler,
    per_device_batch_size=batch_size)`` (mmengine adds ``dataset`` and ``seed``).
    """

    def __init__(self, dataset, per_device_batch_size: int, length_property: str = 'modality_length',
                 mega_batch_mult: int | None = None, seed: int | None = None):
        self.rank, self.world_size = get_dist_info()
        self.lengths = list(getattr(dataset, length_property))
        self.batch = per_device_batch_size * self.world_size
        if mega_batch_mult is None:
            mega_batch_mult = max(1, min(len(self.lengths) // (self.batch * 4), 50))
        self.mega = mega_batch_mult * self.batch
        self.seed = sync_random_seed() if seed is None else seed
        self.epoch = 0
        self.image_indices = [i for i, n in enumerate(self.lengths) if n > 0]
        self.text_indices = [i for i, n in enumerate(self.lengths) if n <= 0]
        total = sum(math.ceil(len(group) / self.batch) * self.batch
                    for group in (self.image_indices, self.text_indices))
        self.num_samples = total // self.world_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        batches = (_modality_batches(self.image_indices, self.lengths, self.batch, self.mega, generator)
                   + _modality_batches(self.text_indices, self.lengths, self.batch, self.mega, generator))
        order = torch.randperm(len(batches), generator=generator).tolist()
        # Rank r takes the r-th slice of every global batch, so ranks share each batch's modality.
        per_rank = self.batch // self.world_size
        start = self.rank * per_rank
        return iter([i for b in order for i in batches[b][start:start + per_rank]])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (mmengine's loops call this)."""
        self.epoch = epoch
