"""Shared fixtures. Tests never reach a model hub: everything they load is built locally."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_OFFLINE', '1')


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Every test starts from the same global RNG state, whatever ran before it."""
    import torch

    torch.manual_seed(0)


@pytest.fixture(scope='session')
def tiny_zoo() -> dict[str, Path]:
    """``{name: folder}`` of the tiny model zoo: the folders the shipped tiny configs use
    (``mmllava.tiny.cache``: ``$MMLLAVA_TINY_ZOO`` if set, else mmllava's cache folder), each
    built there once if missing (``python tools/make_tiny_zoo.py DIR`` prebuilds a zoo)."""
    from mmllava.tiny.cache import tiny_model_path
    from mmllava.tiny.zoo import ZOO_NAMES

    return {name: tiny_model_path(name) for name in ZOO_NAMES}
