"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class MMLLaVAError(Exception):
    """An error caused by user input (config, data, paths), reported without a traceback."""
