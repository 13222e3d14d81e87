"""Padding-free packing: several whole samples share one row of at most ``max_tokens`` tokens.

``PackedDataset`` wraps a dataset (``LLaVADataset``) and groups its samples into packs once, up
front (best-fit decreasing on the token counts, ties broken by ``seed``), so a step of
``batch_size`` packs carries about ``batch_size * max_tokens`` real tokens instead of
``batch_size`` samples padded to the longest.

A pack is one item with the samples concatenated in order, ``position_ids`` that restart at 0 at
every sample and the samples' images in the same order (``llava_collate`` stacks them row-major,
which is the order ``embed`` splices features in). Attention stays inside each sample because
the model, given ``position_ids``, hands transformers no 2D mask: transformers then derives the
per-sample block-diagonal causal mask (SDPA, eager) or the varlen ``cu_seqlens`` (flash-attention-2)
from the restarting position ids. Samples are never split (an image cannot be), and each sample's
first label is masked, because in an unpacked row the first token is never predicted: the per-token
loss is the unpacked run's.

In a config (the tiny LLaVA configs have this switch, off by default; docs/benchmarks.md measures it)::

    pack_to_max_length = True
    train_dataset = (dict(type=PackedDataset, dataset=llava_dataset, max_tokens=max_length)
                     if pack_to_max_length else llava_dataset)
    train_dataloader = dict(batch_size=batch_size, dataset=train_dataset, ...)

``batch_size`` then counts packs; sampler and collate stay as they are (``modality_length`` of a
pack is its token count, positive when it holds an image, so ``LengthGroupedSampler`` still keeps
packs with and without images apart).
"""
from __future__ import annotations

import bisect

import torch

from mmllava.config import build
from mmllava.constants import IGNORE_INDEX
from mmllava.data.worker import failed_sample
from mmllava.errors import MMLLaVAError


def plan_packs(lengths: list[int], max_tokens: int, seed: int = 0) -> list[list[int]]:
    """Group sample indices into packs of at most ``max_tokens`` tokens (best-fit decreasing).

    Each pack lists its samples longest first. Equal lengths are ordered by a ``seed``-ed shuffle,
    so which samples share a pack varies with the seed, not with the data file's order.
    """
    if max_tokens < 1:
        raise MMLLaVAError(f'pack max_tokens must be a positive integer, got {max_tokens!r}')
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens]
    if too_long:
        raise MMLLaVAError(f'{len(too_long)} samples are longer than the pack budget max_tokens={max_tokens} '
                           f'(sample {too_long[0]}: {lengths[too_long[0]]} tokens); set max_tokens >= max_length')
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    order.sort(key=lambda i: -lengths[i])  # stable: the shuffle decides among equal lengths
    packs: list[list[int]] = []
    # (room left, pack number), sorted: the tightest pack that still fits is a bisect away.
    room: list[tuple[int, int]] = []
    for index in order:
        slot = bisect.bisect_left(room, (lengths[index], -1))
        if slot == len(room):
            packs.append([index])
            left, number = max_tokens - lengths[index], len(packs) - 1
        else:
            left, number = room.pop(slot)
            packs[number].append(index)
            left -= lengths[index]
        if left > 0:
            bisect.insort(room, (left, number))
    return packs


def pack_items(items: list[dict]) -> dict:
    """Concatenate dataset items into one pack item (see the module doc)."""
    input_ids, labels, position_ids, images = [], [], [], []
    for item in items:
        n = len(item['input_ids'])
        input_ids += list(item['input_ids'])
        # The first token of a sample is never a target: unpacked, nothing precedes it.
        labels += [IGNORE_INDEX] + list(item['labels'][1:])
        position_ids += range(n)
        if item.get('pixel_values') is not None:
            images.append(item['pixel_values'])
    return {'input_ids': input_ids, 'labels': labels, 'position_ids': position_ids,
            'pixel_values': torch.stack(images) if images else None}


class PackedDataset(torch.utils.data.Dataset):
    """``dataset`` regrouped into packs of at most ``max_tokens`` tokens (see the module doc).

    ``dataset`` needs ``modality_length`` (token counts, positive with an image) and items
    ``{'input_ids', 'labels', 'pixel_values'}``. ``max_tokens`` must be at least the longest
    sample (the dataset's ``max_length`` is always enough).
    """

    def __init__(self, dataset, max_tokens: int, seed: int = 0):
        self.dataset = build(dataset)
        self.max_tokens = max_tokens
        lengths = [abs(n) for n in self.dataset.modality_length]
        self.packs = plan_packs(lengths, max_tokens, seed)
        has_image = [n > 0 for n in self.dataset.modality_length]
        self._lengths = [sum(lengths[i] for i in pack) * (1 if any(has_image[i] for i in pack) else -1)
                         for pack in self.packs]

    def __len__(self) -> int:
        return len(self.packs)

    def __getitem__(self, index: int) -> dict:
        items = [self.dataset[i] for i in self.packs[index]]
        return failed_sample(items) or pack_items(items)  # a worker's bad sample fails the pack (data/worker.py)

    @property
    def modality_length(self) -> list[int]:
        """Tokens per pack, positive when the pack holds an image (for ``LengthGroupedSampler``)."""
        return self._lengths

    @property
    def pad_token_id(self) -> int:
        """The wrapped dataset's padding id."""
        return self.dataset.pad_token_id

    @property
    def num_samples(self) -> int:
        """Samples in all packs (``len(self)`` counts packs)."""
        return sum(len(pack) for pack in self.packs)


def unpacked_dataset_cfg(dataset_cfg):
    """The sample dataset's config inside ``dict(type=PackedDataset, dataset=...)`` (else unchanged),
    for tools that read the samples' settings rather than train on packs."""
    if isinstance(dataset_cfg, dict) and dataset_cfg.get('type') is PackedDataset:
        return dataset_cfg.get('dataset')
    return dataset_cfg
