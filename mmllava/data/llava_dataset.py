"""``LLaVADataset``: LLaVA-format JSON/JSONL, tokenised up front, images loaded lazily.

Every sample is validated and encoded when the dataset is built, so bad data fails before
training starts, with ``FILE:INDEX: reason``; ``skip_bad_samples=True`` skips such samples and
records them in ``dataset.skipped`` instead (never a silent drop).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from mmllava.config import build
from mmllava.constants import DEFAULT_IMAGE_TOKEN
from mmllava.data.encode import encode_conversation
from mmllava.data.image import expand2square, load_image, resolve_image_path
from mmllava.errors import MMLLaVAError
from mmllava.templates import PromptTemplate, get_template


def read_samples(data_path: str | os.PathLike) -> list[Any]:
    """Read a JSON list or a JSONL file (one object a line; ``.jsonl`` suffix or not a JSON list).

    Syntax errors raise ``MMLLaVAError('FILE:LINE:COL: invalid JSON: ...')``.
    """
    path = Path(data_path)
    try:
        text = path.read_text(encoding='utf-8-sig')  # tolerate a byte-order mark
    except (OSError, UnicodeDecodeError) as e:
        raise MMLLaVAError(f'{path}: cannot read data file: {e}') from None
    if path.suffix != '.jsonl' and text.lstrip().startswith('['):
        try:
            samples = json.loads(text)
        except json.JSONDecodeError as e:
            raise MMLLaVAError(f'{path}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}') from None
        return samples
    samples = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            samples.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise MMLLaVAError(f'{path}:{lineno}:{e.colno}: invalid JSON: {e.msg}') from None
    return samples


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
        self.data_path = Path(data_path)
        self.image_folder = None if image_folder is None else Path(image_folder)
        self.tokenizer = build(tokenizer)
        self.image_processor = build(image_processor)
        self.template = get_template(template)
        self.max_length = max_length
        self.pad_image_to_square = pad_image_to_square
        self.system = system
        self.skip_bad_samples = skip_bad_samples
        self.skipped: list[tuple[int, str]] = []
        self.samples: list[dict] = []
        for index, raw in enumerate(read_samples(self.data_path)):
            try:
                self.samples.append(self._prepare(raw))
            except MMLLaVAError as e:
                if not skip_bad_samples:
                    raise MMLLaVAError(f'{self.data_path}:{index}: {e}') from None
                self.skipped.append((index, str(e)))
        if not self.samples:
            raise MMLLaVAError(f'{self.data_path}: no usable samples ({len(self.skipped)} skipped)')

    def _prepare(self, raw: Any) -> dict:
        """Validate one raw sample and encode it; ``MMLLaVAError`` gives the reason."""
        if not isinstance(raw, dict) or 'conversations' not in raw:
            raise MMLLaVAError('a sample must be an object with "conversations"')
        image = raw.get('image')
        if isinstance(image, list):
            if len(image) > 1:
                raise MMLLaVAError(f'{len(image)} images in one sample; only 0 or 1 are supported')
            image = image[0] if image else None
        if image is not None and not isinstance(image, str):
            raise MMLLaVAError(f'"image" must be a path string, got {type(image).__name__}')
        conversations = raw['conversations']
        placeholders = _count_placeholders(conversations)
        num_image_tokens = 0
        if image is not None:
            path = self._image_path(image)
            if not path.is_file():
                raise MMLLaVAError(f'image file not found: {path}')
            if placeholders == 0:
                conversations = _prepend_placeholder(conversations)
            elif placeholders != 1:
                raise MMLLaVAError(f'{placeholders} {DEFAULT_IMAGE_TOKEN} placeholders for 1 image')
            num_image_tokens = self.image_processor.num_image_tokens
        elif placeholders:
            raise MMLLaVAError(f'{placeholders} {DEFAULT_IMAGE_TOKEN} placeholder(s) but the sample has no "image"')
        encoded = encode_conversation(conversations, self.tokenizer, self.template, num_image_tokens,
                                      self.max_length, self.system)
        encoded['image'] = image
        return encoded

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
            image = load_image(sample['image'], self.image_folder)
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
