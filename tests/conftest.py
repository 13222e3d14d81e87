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
def tiny_zoo(tmp_path_factory) -> dict[str, Path]:
    """``{name: folder}`` of the tiny model zoo, built once per session.

    Set ``MMLLAVA_TINY_ZOO=DIR`` to reuse a zoo across sessions: models missing there are built
    into it (``python tools/make_tiny_zoo.py DIR`` prebuilds it).
    """
    from mmllava.tiny.zoo import ZOO_NAMES, build_tiny_zoo, is_built

    cached = os.environ.get('MMLLAVA_TINY_ZOO')
    root = Path(cached) if cached else tmp_path_factory.mktemp('tiny_zoo')
    missing = [name for name in ZOO_NAMES if not is_built(root / name)]
    if missing:
        build_tiny_zoo(root, names=missing)
    return {name: root / name for name in ZOO_NAMES}
