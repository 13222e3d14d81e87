"""A bad sample met in a dataloader worker reaches the main process as the ``MMLLaVAError`` itself.

torch re-raises an exception from a worker as ``type(error)(text)``, where ``text`` is torch's own
report ("Caught ... in DataLoader worker process N. Original Traceback ..."): the one-line message
and the error's attributes are lost, and getting them back would mean parsing torch's wording.
So in a worker the dataset does not raise: it returns ``FailedSample(error)``, a value that the
pack builder and the collate functions pass on as the whole batch, and that torch's main-process
iterator raises when the batch arrives. ``FailedSample`` is a ``torch._utils.ExceptionWrapper``
because that is the value torch's iterator (and its pin-memory thread) treat as "raise this, in
order, in the main process": ``reraise()`` raises the pickled ``MMLLaVAError``, message and
attributes intact. ``tests/test_bad_input.py`` runs a bad image through a worker and checks the line.
Outside a worker there is no such value: the error is raised where it happens.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch._utils import ExceptionWrapper

from mmllava.errors import MMLLaVAError


class FailedSample(ExceptionWrapper):
    """A worker's ``MMLLaVAError`` as data (see the module doc)."""

    def __init__(self, error: MMLLaVAError):
        # not ExceptionWrapper.__init__: it formats the traceback into text, which is what we avoid
        self.error = error
        self.exc_type, self.exc_msg, self.where = type(error), str(error), 'in a DataLoader worker'

    def reraise(self):
        """Raise the worker's error in the process that iterates the dataloader."""
        raise self.error


def raised_or_sent(error: MMLLaVAError) -> FailedSample:
    """``error`` raised here, or (in a dataloader worker) a ``FailedSample`` to return instead."""
    if torch.utils.data.get_worker_info() is None:
        raise error
    return FailedSample(error)


def failed_sample(items: Sequence[Any]) -> FailedSample | None:
    """The first ``FailedSample`` among a batch's (or a pack's) items, which becomes the batch."""
    return next((item for item in items if isinstance(item, FailedSample)), None)
