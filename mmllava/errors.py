"""User-facing errors: the CLI prints their message as one line and exits non-zero."""
import re

# torch re-raises an error from a dataloader worker as ``type(error)(text)`` where ``text`` is
# "Caught <type> in DataLoader worker process N.\nOriginal Traceback ...\n<module.type>: <message>".
_REPLAYED = re.compile(r'Caught \w+ in [^\n]*\.\nOriginal Traceback')


class MMLLaVAError(Exception):
    """An error caused by user input (config, data, paths), reported without a traceback.

    Raised in a dataloader worker, it keeps its own one-line message when torch replays it in the
    main process (the worker's traceback says nothing the user can act on).
    """

    def __init__(self, message: str = ''):
        if isinstance(message, str) and _REPLAYED.match(message):
            message = message.rstrip('\n').rsplit('\n', 1)[-1].split(': ', 1)[-1]
        super().__init__(message)


class MissingExtraError(MMLLaVAError):
    """A command needs an optional extra that is not installed. The CLI prints it as
    ``mmllava VERB: needs the EXTRA extra: pip install 'mmllava[EXTRA]'``."""


def require_extra(extra: str, *modules: str) -> None:
    """Import ``modules`` (the command needs them next anyway); if one is missing, raise
    ``MissingExtraError`` naming the pip extra that installs them."""
    import importlib

    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtraError(f"needs the {extra} extra: pip install 'mmllava[{extra}]'") from None
