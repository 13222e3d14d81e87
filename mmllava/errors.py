"""User-facing errors: the CLI prints their message as one line and exits non-zero.

An error carries what it is about as attributes, set where that is known: ``setting`` (the
config variable or argument whose value is wrong, e.g. ``llm_name_or_path``) and ``value`` (that
value as it was given). The config layer (``mmllava.config_errors.with_config_hint``) compares them with
the config's variables to say which one to edit; nothing ever reads them back out of a message.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator


class MMLLaVAError(Exception):
    """An error caused by user input (config, data, paths), reported without a traceback.

    ``setting`` / ``value``: see the module doc (``None`` when the error is not about one setting,
    e.g. a bad sample). They survive pickling (an exception pickles its ``__dict__``), so an error
    sent from a dataloader worker keeps them (``mmllava.data.worker``).
    """

    def __init__(self, message: str = '', *, setting: str | None = None, value: Any = None):
        super().__init__(message)
        self.setting = setting
        self.value = value


class PathNotFoundError(MMLLaVAError):
    """A path that does not exist; ``value`` is the path as the user wrote it (the config layer
    adds where a relative one was looked for, and which run writes a missing checkpoint)."""


class ImageError(MMLLaVAError):
    """An image file that exists but cannot be used: unreadable, too large, outside the image folder."""


class PlaceholderError(MMLLaVAError):
    """A sample whose ``<image>`` placeholders do not match its images."""


class TruncationError(MMLLaVAError):
    """A sample that ``max_length`` would cut so that it trains on nothing, or on part of a turn pair."""


class MissingExtraError(MMLLaVAError):
    """A command needs an optional extra that is not installed. The CLI prints it as
    ``mmllava VERB: needs the EXTRA extra: pip install 'mmllava[EXTRA]'``."""


@contextlib.contextmanager
def concerning(setting: str, value: Any) -> Iterator[None]:
    """Mark the ``MMLLaVAError``s raised inside, that do not name a setting yet, as being about
    ``setting`` = ``value``: for a loader's entry point, which is given the setting's value as the
    user wrote it, while the checks that fail deep inside only see the folder or file it led to."""
    try:
        yield
    except MMLLaVAError as error:
        if error.setting is None and error.value is None:
            error.setting, error.value = setting, value
        raise


def require_extra(extra: str, *modules: str) -> None:
    """Import ``modules`` (the command needs them next anyway); if one is missing, raise
    ``MissingExtraError`` naming the pip extra that installs them."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtraError(f"needs the {extra} extra: pip install 'mmllava[{extra}]'") from None
