"""``LLaVADataset``: LLaVA-format JSON/JSONL, tokenised up front, images loaded lazily.

Every sample is validated and encoded when the dataset is built (image files: their header), so
bad data fails before training starts, with ``FILE:INDEX: reason``; ``skip_bad_samples=True`` skips
such samples, records them in ``dataset.skipped`` and logs how many and why (never a silent drop).
Damage past an image's header (a truncated file) shows when the image is loaded, as
``FILE:INDEX: reason`` too; ``mmllava check-dataset`` verifies every image in full beforehand.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from mmengine.logging import print_log

from mmllava.paths import require_dir
from mmllava.config import build
from mmllava.constants import DEFAULT_IMAGE_TOKEN
from mmllava.data.encode import encode_conversation
from mmllava.data.image import check_image, expand2square, load_image, resolve_image_path
from mmllava.data.worker import raised_or_sent
from mmllava.errors import MMLLaVAError, PathNotFoundError, PlaceholderError
from mmllava.templates import PromptTemplate, get_template


def read_samples(data_path: str | os.PathLike) -> list[Any]:
    """Read a JSON list or a JSONL file (one object a line; ``.jsonl`` suffix or not a JSON list).

    Syntax errors raise ``MMLLaVAError('FILE:LINE:COL: invalid JSON: ...')``; a JSON document that
    is not a list (say ``{"data": [...]}`` over several lines) is refused as such, not misread as JSONL.
    """
    path = Path(data_path)
    try:
        text = path.read_text(encoding='utf-8-sig')  # tolerate a byte-order mark
    except FileNotFoundError:
        raise PathNotFoundError(f'data file not found: {path}', setting='data_path', value=data_path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise MMLLaVAError(f'{path}: cannot read data file: {e}') from None
    if path.suffix != '.jsonl' and text.lstrip().startswith('['):
        try:
            samples = json.loads(text)
        except json.JSONDecodeError as e:
            raise MMLLaVAError(f'{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}') from None
        return samples
    if path.suffix != '.jsonl':
        _refuse_non_list_document(path, text)
    samples = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            samples.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise MMLLaVAError(f'{path}:{lineno}:{e.colno}: invalid JSON: {e.msg}') from None
    return samples


def _refuse_non_list_document(path: Path, text: str) -> None:
    """Raise when ``text`` is one JSON document other than a one-line object (= one-sample JSONL)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return  # several lines of JSONL, or a syntax error the JSONL reader reports by line
    if isinstance(document, dict) and len(text.strip().splitlines()) == 1:
        return
    kind = {dict: 'an object', str: 'a string'}.get(type(document), f'a {type(document).__name__}')
    raise MMLLaVAError(f'{path}: the top level is {kind}; expected a JSON list of samples '
                       '(or JSONL: one sample object a line)')


def summarize_skipped(skipped: list[tuple[int, MMLLaVAError]], limit: int = 3) -> str:
    """``skipped`` (index, error) pairs as one line: the most common reasons with their counts."""
    counts: dict[str, list[int]] = {}
    for index, reason in skipped:
        counts.setdefault(str(reason), []).append(index)
    ranked = sorted(counts.items(), key=lambda item: -len(item[1]))
    parts = [f'{len(indices)} x [{reason}] (first at index {indices[0]})' for reason, indices in ranked[:limit]]
    if len(ranked) > limit:
        parts.append(f'{len(ranked) - limit} other reasons')
    return '; '.join(parts)


class LLaVADataset(torch.utils.data.Dataset):
    """LLaVA-format samples -> ``{'input_ids', 'labels', 'pixel_values'}`` (see docs/architecture.md).

    ``tokenizer`` and ``image_processor`` are objects or ``dict(type=...)`` configs;
    ``image_processor`` may be None for text-only data. ``template`` is a template name or a
    ``PromptTemplate``. A sample has 0 or 1 image; one with an ``image`` but no ``<image>``
    placeholder gets ``<image>\\n`` before its first question (as LLaVA does).
    ``pad_image_to_square`` pads with the processor's mean colour before preprocessing.
    """

    def __init__(self, data_path: str | os.PathLike, image_folder: str | os.PathLike | None, tokenizer,
                 image_processor, template: str | PromptTemplate, max_length: int,
                 pad_image_to_square: bool = False, system: str | None = None, skip_bad_samples: bool = False):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise MMLLaVAError(f'max_length: expected a positive integer, got {max_length!r}',
                               setting='max_length', value=max_length)
        self.data_path = Path(data_path)
        self.image_folder = None if image_folder is None else Path(image_folder)
        self.tokenizer = build(tokenizer)
        self.image_processor = build(image_processor)
        self.template = get_template(template)
        self.max_length = max_length
        self.pad_image_to_square = pad_image_to_square
        self.system = system
        self.skip_bad_samples = skip_bad_samples
        self.skipped: list[tuple[int, MMLLaVAError]] = []  # the error, whose type is the problem's kind
        self.samples: list[dict] = []
        raw_samples = read_samples(data_path)
        if self.image_folder is not None and any(isinstance(raw, dict) and raw.get('image') for raw in raw_samples):
            require_dir(image_folder, 'image_folder')  # one error for the setting, not one per sample
        for index, raw in enumerate(raw_samples):
            try:
                self.samples.append({**self.prepare_sample(raw), 'index': index})
            except MMLLaVAError as e:
                if not skip_bad_samples:
                    raise MMLLaVAError(f'{self.data_path}:{index}: {e}') from None
                self.skipped.append((index, e))
        if not self.samples:
            raise MMLLaVAError(f'{self.data_path}: no usable samples ({len(self.skipped)} skipped): '
                               + summarize_skipped(self.skipped))
        # Skipping is never silent: the count and the reasons go to the console now, and
        # DatasetInfoHook repeats `skip_report` into the run's log when training starts.
        self.skip_report = None
        if self.skipped:
            self.skip_report = (f'{self.data_path}: skipped {len(self.skipped)} of '
                                f'{len(self.skipped) + len(self.samples)} samples (skip_bad_samples=True): '
                                f'{summarize_skipped(self.skipped)}')
            print_log(self.skip_report, logger='current', level=logging.WARNING)

    def prepare_sample(self, raw: Any, max_length: int | None = None) -> dict:
        """Validate one raw sample and encode it (``max_length`` overrides the dataset's, e.g. to
        measure a sample's untruncated length); ``MMLLaVAError`` gives the reason."""
        if not isinstance(raw, dict) or 'conversations' not in raw:
            raise MMLLaVAError('a sample must be an object with "conversations"')
        image = raw.get('image')
        if isinstance(image, list):
            if len(image) > 1:
                raise PlaceholderError(f'{len(image)} images in one sample; only 0 or 1 are supported')
            image = image[0] if image else None
        if image is not None and not isinstance(image, str):
            raise MMLLaVAError(f'"image" must be a path string, got {type(image).__name__}')
        conversations = raw['conversations']
        placeholders = _count_placeholders(conversations)
        num_image_tokens = 0
        if image is not None:
            path = self._image_path(image)
            check_image(path)  # the header only: a missing, non-image or oversized file fails here
            if placeholders == 0:
                conversations = _prepend_placeholder(conversations)
            elif placeholders != 1:
                raise PlaceholderError(f'{placeholders} {DEFAULT_IMAGE_TOKEN} placeholders for 1 image')
            num_image_tokens = self._num_image_tokens(path)
        elif placeholders:
            raise PlaceholderError(f'{placeholders} {DEFAULT_IMAGE_TOKEN} placeholder(s) but the sample has no "image"')
        encoded = encode_conversation(conversations, self.tokenizer, self.template, num_image_tokens,
                                      max_length or self.max_length, self.system)
        encoded['image'] = image
        return encoded

    def _num_image_tokens(self, path: Path) -> int:
        """Sequence positions the image at ``path`` takes (fixed for a CLIP-style tower; InternVL's
        dynamic tiling makes it depend on the image's size)."""
        return self.image_processor.num_image_tokens

    def _image_path(self, image: str) -> Path:
        if self.image_processor is None:
            raise MMLLaVAError('the sample has an image but the dataset has no image_processor')
        if self.image_folder is None:
            raise MMLLaVAError('the sample has an image but the dataset has no image_folder')
        return resolve_image_path(image, self.image_folder)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        pixel_values = None
        if sample['image'] is not None:
            try:
                image = load_image(sample['image'], self.image_folder)
            except MMLLaVAError as e:  # damage past the header shows only now
                # in a dataloader worker: returned as the batch, raised in the main process
                return raised_or_sent(MMLLaVAError(f'{self.data_path}:{sample["index"]}: {e}'))
            if self.pad_image_to_square:
                image = expand2square(image, self.image_processor.background_rgb)
            pixel_values = self.image_processor(image)
        return {'input_ids': sample['input_ids'], 'labels': sample['labels'], 'pixel_values': pixel_values}

    @property
    def modality_length(self) -> list[int]:
        """Token counts, positive for samples with an image and negative for text-only ones."""
        return [len(s['input_ids']) if s['image'] is not None else -len(s['input_ids']) for s in self.samples]

    @property
    def pad_token_id(self) -> int:
        """The id ``llava_collate`` should pad with: the tokenizer's pad, else its EOS, else 0."""
        for attr in ('pad_token_id', 'eos_token_id'):
            value = getattr(self.tokenizer, attr, None)
            if value is not None:
                return value
        return 0


def _count_placeholders(conversations: Any) -> int:
    """``<image>`` occurrences over the well-formed turns (encode_conversation rejects the others)."""
    if not isinstance(conversations, list):
        return 0
    return sum(turn['value'].count(DEFAULT_IMAGE_TOKEN) for turn in conversations
               if isinstance(turn, dict) and isinstance(turn.get('value'), str))


def _prepend_placeholder(conversations: Any) -> Any:
    """LLaVA's rule for an image without a placeholder: ``<image>\\n`` before the first human text."""
    if not isinstance(conversations, list):
        return conversations  # encode_conversation reports the malformed value
    result = [dict(turn) if isinstance(turn, dict) else turn for turn in conversations]
    for turn in result:
        if isinstance(turn, dict) and turn.get('from') == 'human' and isinstance(turn.get('value'), str):
            turn['value'] = DEFAULT_IMAGE_TOKEN + '\n' + turn['value']
            break
    return result
