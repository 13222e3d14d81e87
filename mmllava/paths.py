"""Paths a setting names: one check, so every setting's missing or wrong path reads the same way
and carries the setting and the value (``PathNotFoundError``) for the config layer's hint."""
from __future__ import annotations

import os
from pathlib import Path

from mmllava.errors import MMLLaVAError, PathNotFoundError


def require_dir(path: str | os.PathLike | None, what: str) -> Path:
    """``path`` as a ``Path`` if it is an existing directory; ``what`` names the setting in messages."""
    if path is None or not Path(path).exists():
        raise PathNotFoundError(f'{what}: {path} does not exist', setting=what, value=path)
    if not Path(path).is_dir():
        raise MMLLaVAError(f'{what}: {path} is not a directory', setting=what, value=path)
    return Path(path)
