"""What ``check-dataset`` reports about a config's training data, without loading model weights.

The dataset is built from the config exactly as training builds it (tokenizer, image processor,
template, ``max_length``), in skip mode so that every bad sample is found, not just the first;
then every image is verified (``PIL.Image.verify`` + pixel limit) and the samples that lose turns to
``max_length`` are measured untruncated.
"""
from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass, field

from mmllava.config import build
from mmllava.constants import IGNORE_INDEX
from mmllava.data.encode import parse_conversation
from mmllava.data.image import check_image, resolve_image_path
from mmllava.data.llava_dataset import LLaVADataset
from mmllava.data.packing import unpacked_dataset_cfg
from mmllava.errors import ImageError, MMLLaVAError, PathNotFoundError, PlaceholderError, TruncationError

# Problem kinds, by the type of error the dataset raised for the sample (first match wins).
PROBLEM_KINDS = (
    (PathNotFoundError, 'missing image'),  # a sample's only path is its image's
    (ImageError, 'unreadable image'),
    (PlaceholderError, 'placeholder/image mismatch'),
    (TruncationError, 'no trained token after truncation'),
)
OTHER_KIND = 'invalid sample'


def problem_kind(error: MMLLaVAError) -> str:
    """The ``PROBLEM_KINDS`` name of the error a sample raised (``invalid sample`` otherwise)."""
    return next((kind for error_type, kind in PROBLEM_KINDS if isinstance(error, error_type)), OTHER_KIND)


def build_training_dataset(cfg, **overrides):
    """The config's ``train_dataloader.dataset`` (an ``LLaVADataset`` or ``InternVLDataset``) built with ``overrides``.

    Only the tokenizer and the image processor are loaded, never model weights. The commands call
    it inside ``mmllava.config_errors.reported_config_errors``, which refuses wrong arguments beforehand.
    """
    dataset_cfg = unpacked_dataset_cfg((cfg.get('train_dataloader') or {}).get('dataset'))
    dataset_type = dataset_cfg.get('type') if isinstance(dataset_cfg, dict) else None
    if not (isinstance(dataset_type, type) and issubclass(dataset_type, LLaVADataset)):  # InternVLDataset is one
        raise MMLLaVAError(f'{cfg.filename}: train_dataloader.dataset must be dict(type=LLaVADataset, ...) '
                           'for this command')
    return build({**dataset_cfg, **overrides})


@dataclass
class DatasetReport:
    """Counts, problems and token lengths of one training data file (see ``inspect_dataset``)."""

    data_path: str
    max_length: int
    samples: int = 0
    with_image: int = 0
    turns: int = 0
    problems: list[tuple[int, MMLLaVAError]] = field(default_factory=list)  # (index, what it raised)
    truncated: list[tuple[int, int]] = field(default_factory=list)  # (index, untruncated length)
    lengths: list[int] = field(default_factory=list)  # untruncated, of the usable samples

    @property
    def ok(self) -> bool:
        """True when training would neither stop on nor lose any sample."""
        return not self.problems and not self.truncated

    def lines(self, max_listed: int = 50) -> list[str]:
        """The report as printed by ``mmllava check-dataset``."""
        out = [f'data: {self.data_path}',
               f'samples: {self.samples} (with image: {self.with_image}, text-only: {self.samples - self.with_image}), '
               f'turns: {self.turns}']
        if self.lengths:
            ordered = sorted(self.lengths)
            p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]
            out.append(f'tokens: min {ordered[0]}, median {statistics.median(ordered):g}, p95 {p95}, '
                       f'max {ordered[-1]}; {len(self.truncated)} longer than max_length={self.max_length}')
        kinds = {}
        for _, reason in self.problems:
            kinds[problem_kind(reason)] = kinds.get(problem_kind(reason), 0) + 1
        detail = ', '.join(f'{kind}: {count}' for kind, count in kinds.items())
        out.append(f'problems: {len(self.problems)}' + (f' ({detail})' if detail else ''))
        listed = [f'{self.data_path}:{index}: {reason}' for index, reason in sorted(self.problems)]
        listed += [f'{self.data_path}:{index}: {length} tokens > max_length={self.max_length}: '
                   'trailing turns are dropped' for index, length in self.truncated]
        out += listed[:max_listed]
        if len(listed) > max_listed:
            out.append(f'... and {len(listed) - max_listed} more')
        if self.problems:
            out.append(f'result: training stops at the first bad sample; with skip_bad_samples=True it skips '
                       f'{len(self.problems)} of {self.samples}')
        elif self.truncated:
            out.append(f'result: {len(self.truncated)} samples lose turns to max_length={self.max_length}')
        else:
            out.append('result: OK')
        return out


def _trained_spans(labels) -> int:
    """Contiguous runs of trained labels: one per kept human/gpt pair (prompts separate them)."""
    return sum(1 for i, label in enumerate(labels)
               if label != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX))


def inspect_dataset(dataset, raw_samples: list, verify_images: bool = True) -> DatasetReport:
    """Report on ``dataset`` (an ``LLaVADataset`` built with ``skip_bad_samples=True`` from ``raw_samples``)."""
    report = DatasetReport(str(dataset.data_path), dataset.max_length, samples=len(raw_samples),
                           problems=list(dataset.skipped))
    for raw in raw_samples:
        if isinstance(raw, dict):
            report.with_image += bool(raw.get('image'))
            conversations = raw.get('conversations')
            report.turns += len(conversations) if isinstance(conversations, list) else 0
    for sample in dataset.samples:
        index = sample['index']
        if verify_images and sample['image'] is not None:
            try:
                check_image(resolve_image_path(sample['image'], dataset.image_folder), verify=True)
            except MMLLaVAError as e:
                report.problems.append((index, e))
                continue
        length = len(sample['input_ids'])
        _, pairs = parse_conversation(raw_samples[index]['conversations'])
        if _trained_spans(sample['labels']) < len(pairs):
            length = len(dataset.prepare_sample(raw_samples[index], max_length=sys.maxsize)['input_ids'])
            report.truncated.append((index, length))
        report.lengths.append(length)
    return report
