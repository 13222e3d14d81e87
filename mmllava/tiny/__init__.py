"""Tiny models and data in the real on-disk formats, for tests and demos.

``build_tiny_zoo`` and ``ZOO_NAMES`` are exported lazily so that importing the light submodules
(``vocabulary``, ``synthetic``) does not import torch."""
from __future__ import annotations

__all__ = ['ZOO_NAMES', 'build_tiny_zoo']


def __getattr__(name: str):
    if name in __all__:
        # here, not at the top: see the module doc (config loading resolves {{tiny_models}}
        # through the light submodules)
        from mmllava.tiny import zoo

        return getattr(zoo, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
