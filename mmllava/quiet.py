"""Known-harmless third-party output, filtered at its source so that the terminal shows what a
person can act on. Each filter names the one message it drops; every other warning still shows.

``install()`` runs once per process, before the libraries are imported (``mmllava.cli.main``).
Filters on named loggers and ``warnings`` filters are set up without importing anything heavy.
"""
from __future__ import annotations

import logging
import os
import warnings

_INSTALLED = False


class _DropMessages(logging.Filter):
    """Drops the records of one logger whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


class _InternLM2AsLlama(logging.Filter):
    """transformers warns "You are using a model of type `internlm2` to instantiate a model of type
    `llama` ... not supported and can yield errors" when the LLM loader reads an InternLM2 config as
    a Llama one, which is how mmllava loads InternLM2 (the weights are converted on load and
    checked by the conformance tests): one line of ours instead of five of transformers'."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith('You are using a model of type `internlm2` to instantiate a model of type `llama`'):
            record.msg, record.args = 'InternLM2 checkpoint: loaded as a Llama model (weights converted on load)', ()
            record.levelno, record.levelname = logging.INFO, 'INFO'
        return True


def install(progress_bars: bool = False) -> None:
    """Install the filters (idempotent). ``progress_bars``: keep transformers' progress bars."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    # bitsandbytes (CPU backend, at import): "Failed to load CPU gemm_4bit_forward from
    # kernels-community: No module named 'kernels'": an optional faster CPU kernel; without it
    # bitsandbytes uses its own, and runs with no 4-bit layer never call either.
    logging.getLogger('bitsandbytes.backends.cpu.ops').addFilter(
        _DropMessages('Failed to load CPU gemm_4bit_forward from kernels-community'))
    # DeepSpeed (at import, on a machine without a GPU): "Setting accelerator to CPU. If you have
    # GPU or other accelerator, we were unable to detect it." The train header names the device.
    logging.getLogger('DeepSpeed').addFilter(_DropMessages('Setting accelerator to CPU.'))
    # mmengine (setup_env, distributed runs): "Setting OMP_NUM_THREADS / MKL_NUM_THREADS environment
    # variable for each process to be 1 in default": it only applies to the dataloader workers
    # started after it (the main process keeps its threads; the train header shows them).
    warnings.filterwarnings('ignore', message=r'Setting (OMP|MKL)_NUM_THREADS environment variable for each process',
                            category=UserWarning)
    # PEFT calls transformers' deprecated `is_gradient_checkpointing` ("deprecated and will be
    # removed in v6. Use `is_activation_checkpointing` instead."): PEFT's to change, not the user's.
    warnings.filterwarnings('ignore', message=r'`is_gradient_checkpointing` is deprecated', category=FutureWarning)
    # transformers: the InternLM2-as-Llama note becomes one line of ours (see _InternLM2AsLlama).
    logging.getLogger('transformers.configuration_utils').addFilter(_InternLM2AsLlama())
    if not progress_bars:
        # transformers draws a "Loading weights" progress bar per model (instant for local files);
        # it reads this at import, through huggingface_hub. Nothing is downloaded at run time.
        os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')
