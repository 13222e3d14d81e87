"""The sequence lengths a config trains on, read with ``check-dataset``'s code (tokeniser and image
processor only; images are not opened past their header)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from mmengine.logging import MMLogger

from mmllava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mmllava.data.llava_dataset import read_samples
from mmllava.data.packing import PackedDataset, plan_packs
from mmllava.datatools.inspect import build_training_dataset, inspect_dataset
from mmllava.errors import MMLLaVAError


def percentile(values: list[int], q: float) -> int:
    """The ``q``-quantile by rank (check-dataset's p95: the ceil(q·n)-th smallest)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


@dataclass
class DataProfile:
    """Per-sample (or per-pack) positions, labelled positions and images (tiles) as trained."""

    max_length: int
    lengths: list[int] = field(default_factory=list)  # after max_length
    labelled: list[int] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    untruncated: list[int] = field(default_factory=list)
    cut: int = 0  # samples max_length shortens
    samples: int = 0
    note: str = ''  # why the data could not be read, when it could not
    packed: bool = False

    @property
    def read(self) -> bool:
        return bool(self.lengths)

    def at(self, q: float) -> tuple[int, int, int]:
        """(positions, labelled positions, images) of the sample at quantile ``q`` of the length."""
        if not self.read:
            raise ValueError('no data')
        order = sorted(range(len(self.lengths)), key=lambda i: self.lengths[i])
        index = order[max(math.ceil(q * len(order)) - 1, 0)]
        return self.lengths[index], self.labelled[index], self.images[index]


def read_profile(cfg, tokens_per_tile: int) -> DataProfile:
    """The lengths of ``cfg``'s training samples (packs when ``pack_to_max_length``); an empty
    profile with ``note`` when the data or its tokenizer is not on this machine."""
    dataset_cfg = (cfg.get('train_dataloader') or {}).get('dataset') or {}
    packed = isinstance(dataset_cfg, dict) and dataset_cfg.get('type') is PackedDataset
    max_length = cfg.get('max_length') or 2048
    profile = DataProfile(int(max_length), packed=packed)
    MMLogger.get_instance('mmllava_plan', log_level='ERROR')
    try:
        dataset = build_training_dataset(cfg, skip_bad_samples=True)
        report = inspect_dataset(dataset, read_samples(dataset.data_path), verify_images=False)
    except MMLLaVAError as e:
        profile.note = str(e)
        return profile
    profile.max_length = dataset.max_length
    profile.untruncated, profile.cut, profile.samples = report.lengths, len(report.truncated), report.samples
    for sample in dataset.samples:
        ids = sample['input_ids']
        profile.lengths.append(len(ids))
        profile.labelled.append(sum(1 for label in sample['labels'][1:] if label != IGNORE_INDEX))
        profile.images.append(sum(1 for t in ids if t == IMAGE_TOKEN_INDEX) // tokens_per_tile)
    if packed:
        budget = dataset_cfg.get('max_tokens') or profile.max_length
        packs = plan_packs(profile.lengths, budget)
        profile.lengths, profile.labelled, profile.images = (
            [sum(values[i] for i in pack) for pack in packs]
            for values in (profile.lengths, profile.labelled, profile.images))
    return profile
