"""Load local folders (real checkpoints or tiny-zoo models) into transformers-native modules."""
from __future__ import annotations

import os

from mmllava.data.image import ImageProcessor
from mmllava.pretrained.llm import load_llm
from mmllava.pretrained.tokenizer import load_tokenizer
from mmllava.pretrained.vision import load_vision_encoder


def load_image_processor(path: str | os.PathLike):
    """``mmllava.data.image.ImageProcessor.from_pretrained(path)``, imported only when called."""
    return ImageProcessor.from_pretrained(path)


__all__ = ['load_image_processor', 'load_llm', 'load_tokenizer', 'load_vision_encoder']
