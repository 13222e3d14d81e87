"""The process-wide changes mmllava makes to mmengine and DeepSpeed, each checked before it is made.

``apply()`` (once per process; ``runner.build_runner`` and ``deepspeed.DeepSpeedStrategy`` call
it) registers mmllava's checkpoint loader through mmengine's public ``CheckpointLoader`` and
replaces the one private function left that no public hook, option or API can replace.
``LEDGER`` lists each private function mmllava replaces or calls, with the module path and
signature it was written for; ``check_target`` raises a one-line ``MMLLaVAError`` at start when
an upgrade moved or changed one, instead of patching something that moved. docs/mmengine_compat.md
holds, for each, the upstream versions and behaviour it answers and how we would know to remove
it, and what replaced the patches that public interfaces could replace.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
from dataclasses import dataclass
from importlib import metadata

import torch

from mmllava.errors import MMLLaVAError

_APPLIED = False
DOC = 'docs/mmengine_compat.md'


@dataclass(frozen=True)
class Upstream:
    """A private upstream function mmllava replaces (``patched``) or calls, as it was written for."""

    module: str
    name: str
    signature: str
    package: str  # the distribution that ships it
    written_for: str  # its version when the entry was written
    patched: bool
    section: str  # the heading in DOC


SHM_OP = Upstream('deepspeed.comm.torch', 'build_shm_op', '()', 'deepspeed', '0.19.8', patched=True,
                  section='DeepSpeed builds its shared-memory all-reduce on CPU')
LOAD_TO_MODEL = Upstream('mmengine.runner.checkpoint', '_load_checkpoint_to_model',
                         r"(model, checkpoint, strict=False, logger=None, revise_keys=[('^module\\.', '')])",
                         'mmengine', '0.10.7', patched=False, section='Checkpoint loading')
LEDGER = (SHM_OP, LOAD_TO_MODEL)


def apply() -> None:
    """Check the ledger, then install the process-wide changes (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    ds_comm_torch = check_target(SHM_OP) if _skip_shm_op() else None
    check_target(LOAD_TO_MODEL)
    _register_checkpoint_loader()
    if ds_comm_torch is not None:
        ds_comm_torch.build_shm_op = _no_shm_op
    _APPLIED = True


def log(message: str, level: int = logging.INFO) -> None:
    """A line in the current mmengine log (console and the run's log file)."""
    from mmengine.logging import print_log

    print_log(message, logger='current', level=level)


def installed_version(package: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_target(entry: Upstream):
    """The module holding ``entry``'s function, or None when its package is not installed.

    Raises the one-line ``MMLLaVAError`` naming the function and the versions when the function
    is not at ``entry.module`` or its signature is not ``entry.signature``.
    """
    installed = installed_version(entry.package)
    if installed is None:
        return None
    where = f'{entry.module}.{entry.name}'
    try:
        module = importlib.import_module(entry.module)
        function = getattr(module, entry.name)
    except (ImportError, AttributeError):
        problem = 'is gone (moved or removed)'
    else:
        found = str(inspect.signature(function))
        if found == entry.signature:
            return module
        problem = f'has the signature {found}, not {entry.signature}'
    use = 'patches' if entry.patched else 'calls'
    raise MMLLaVAError(f'{where} {problem}: mmllava {use} it as in {entry.package} {entry.written_for}, '
                       f'installed is {entry.package} {installed}; see {DOC} ("{entry.section}")')



# --- mmengine's local loader: torch.load's weights_only default -------------------------------
def _register_checkpoint_loader() -> None:
    """mmengine's local checkpoint loader calls ``torch.load(filename)``; since torch 2.6 that means
    ``weights_only=True`` and our own ``iter_N.pth`` (message hub, numpy history) fails with
    UnpicklingError. Local paths load through ``mmllava.checkpoints.load_checkpoint_file`` instead
    (an allow-list of exactly what our checkpoints hold), registered with mmengine's public
    ``CheckpointLoader.register_scheme``: ``load_from``, resume and ``pretrained_pth`` use it."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from mmllava.checkpoints import load_checkpoint_file

    CheckpointLoader.register_scheme(prefixes='', loader=load_checkpoint_file, force=True)


# --- DeepSpeed JIT-builds its shm all-reduce op on CPU -----------------------------------------
def _skip_shm_op() -> bool:
    """On the CPU accelerator DeepSpeed's ``TorchBackend`` JIT-compiles ``deepspeed_shm_comm``
    (about 150 s on a fresh machine, then seconds to load) at every ``init_distributed``, but only
    its inference all-reduce uses it; training collectives go through ``torch.distributed``
    (gloo). DeepSpeed has no option to skip it: ``build_shm_op`` is replaced by a no-op on CPU;
    ``MMLLAVA_DS_SHM_COMM=1`` keeps it."""
    return not torch.cuda.is_available() and os.environ.get('MMLLAVA_DS_SHM_COMM') != '1'


def _no_shm_op():
    """What ``build_shm_op`` returns where the op is not compatible: no op (``TorchBackend`` then
    keeps ``shm_comm_op = None``)."""
    return None
