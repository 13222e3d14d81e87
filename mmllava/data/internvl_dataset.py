"""``InternVLDataset`` and ``internvl_collate``: LLaVA-format data for InternVL2 with dynamic tiling.

A sample's image becomes ``<img>`` + ``tokens_per_tile x tiles`` image positions + ``</img>``,
the layout of InternVL's ``<img><IMG_CONTEXT>...</img>`` (inside training the context tokens are
``IMAGE_TOKEN_INDEX`` positions, as for LLaVA; exports use the real ``<IMG_CONTEXT>`` id). The tile
count depends on the image's size, so it is read from the file's header when the dataset is built:
lengths, truncation and length-grouped sampling are exact before any pixel is decoded.
Everything else (validation, ``<image>\\n`` prepended when missing, at most one image per sample,
encoding with the prompt template) is ``LLaVADataset``'s.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from mmllava.config import build
from mmllava.constants import IMAGE_TOKEN_INDEX
from mmllava.data.collate import llava_collate
from mmllava.data.llava_dataset import LLaVADataset
from mmllava.data.worker import failed_sample
from mmllava.errors import ImageError, MMLLaVAError
from mmllava.templates import PromptTemplate

IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN = '<img>', '</img>', '<IMG_CONTEXT>'
# EXIF orientations that rotate by 90 or 270 degrees: load_image's exif_transpose swaps width and height.
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def image_token_ids(tokenizer) -> tuple[int, int, int]:
    """The ids of ``<img>``, ``</img>`` and ``<IMG_CONTEXT>``, each a single token of ``tokenizer``."""
    ids = []
    for token in (IMG_START_TOKEN, IMG_END_TOKEN, IMG_CONTEXT_TOKEN):
        encoded = tokenizer.encode(token, add_special_tokens=False)
        if len(encoded) != 1:
            raise MMLLaVAError(f'the tokenizer has no {token} token (InternVL image tokens); use the tokenizer '
                               'of the InternVL folder')
        ids.append(encoded[0])
    return ids[0], ids[1], ids[2]


def wrap_image_runs(input_ids: Sequence[int], start_id: int, end_id: int) -> list[int]:
    """Each run of ``IMAGE_TOKEN_INDEX`` positions with its first and last turned into ``<img>`` / ``</img>``."""
    ids = list(input_ids)
    for i, token in enumerate(ids):
        if token == IMAGE_TOKEN_INDEX:
            if i == 0 or input_ids[i - 1] != IMAGE_TOKEN_INDEX:
                ids[i] = start_id
            if i + 1 == len(ids) or input_ids[i + 1] != IMAGE_TOKEN_INDEX:
                ids[i] = end_id
    return ids


def oriented_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image as ``load_image`` will return it (EXIF rotation applied), from the header."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112)
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f'{path}: cannot read image: {e}') from None
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


class InternVLDataset(LLaVADataset):
    """LLaVA-format JSON/JSONL for InternVL2: ``{'input_ids', 'labels', 'pixel_values': [tiles, 3, S, S]}``.

    ``image_processor`` is an :class:`~mmllava.data.internvl_image.InternVLImageProcessor` (or its
    config); ``tokenizer`` must know ``<img>``, ``</img>`` and ``<IMG_CONTEXT>``. Arguments otherwise
    as ``LLaVADataset`` (no pad-to-square: tiling keeps the aspect ratio).
    """

    def __init__(self, data_path: str | os.PathLike, image_folder: str | os.PathLike | None, tokenizer,
                 image_processor, template: str | PromptTemplate = 'internlm2_chat', max_length: int = 8192,
                 system: str | None = None, skip_bad_samples: bool = False):
        tokenizer = build(tokenizer)
        self.image_start_id, self.image_end_id, _ = image_token_ids(tokenizer)
        super().__init__(data_path, image_folder, tokenizer, image_processor, template, max_length,
                         system=system, skip_bad_samples=skip_bad_samples)

    def _num_image_tokens(self, path: Path) -> int:
        # Two more positions than features: they become <img> and </img> in prepare_sample.
        processor = self.image_processor
        return processor.num_tiles(*oriented_size(path)) * processor.tokens_per_tile + 2

    def prepare_sample(self, raw: Any, max_length: int | None = None) -> dict:
        """``LLaVADataset.prepare_sample`` with the image positions wrapped in ``<img>`` ... ``</img>``."""
        encoded = super().prepare_sample(raw, max_length)
        encoded['input_ids'] = wrap_image_runs(encoded['input_ids'], self.image_start_id, self.image_end_id)
        return encoded


def internvl_collate(instances: Sequence[dict], pad_token_id: int = 0) -> dict:
    """``llava_collate`` for samples with several tiles each.

    ``pixel_values`` concatenates the tiles of every image in order (``[total_tiles, 3, S, S]``) and
    ``num_tiles`` holds each image's tile count (``LongTensor[num_images]``), so per-image features
    can be told apart; both are None for a text-only batch.
    """
    failed = failed_sample(instances)
    if failed is not None:  # a bad sample in a dataloader worker: the batch is its error (data/worker.py)
        return failed
    batch = llava_collate([{**item, 'pixel_values': None} for item in instances], pad_token_id)
    images = [item['pixel_values'] for item in instances if item.get('pixel_values') is not None]
    batch['data']['pixel_values'] = torch.cat(images) if images else None
    batch['data']['num_tiles'] = torch.tensor([len(image) for image in images]) if images else None
    return batch
