"""Cancellation points inside a forward pass: a request whose client has gone (or a server that
shuts down) stops at the next transformer layer, not only after the next generated token. A long
prompt's prefill is one forward pass, and on a large model it can take seconds."""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import torch


@contextlib.contextmanager
def cancellation_points(model, cancelled: threading.Event, error: Callable[[], Exception]) -> Iterator[None]:
    """While the ``with`` runs, every layer of ``model`` (each element of its ``ModuleList`` s: the
    LLM's decoder layers, the vision tower's encoder layers) first checks ``cancelled`` and, when
    it is set, raises ``error()``, which ends the forward pass and ``generate`` with it."""
    def check(module, args):
        if cancelled.is_set():
            raise error()

    handles = [layer.register_forward_pre_hook(check)
               for module in model.modules() if isinstance(module, torch.nn.ModuleList) for layer in module]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
