"""Epoch-based lr schedules on mmllava's iteration-based loop: where each phase begins and ends.

XTuner's configs give the warm-up and the cosine phase in epochs (``end=warmup_ratio * max_epochs``,
``convert_to_iter_based=True``). mmengine converts an epoch value ``x`` to ``int(x * epoch_length)``:
it truncates, so ``0.03`` epoch of 40 iterations is 1 iteration (a warm-up that never leaves
``start_factor``; the cosine phase after it then scales that ~0 lr for the whole run: XTuner's lr
stays at 2e-9) and below one iteration it raises ``end should be larger than begin``.

``exact_boundaries`` rewrites each converted phase's ``begin``/``end`` to the iteration chosen by
``scheduler_boundary_iters``, written as the exact fraction ``Fraction(iteration, epoch_length)``
of an epoch, so that mmengine's own ``int(x * epoch_length)`` is that iteration with no rounding
(the rest of mmengine's conversion, e.g. ``T_max``, is untouched). ``runner.Runner`` and
``deepspeed.DeepSpeedStrategy`` apply it in their public ``build_param_scheduler``.
"""
from __future__ import annotations

import copy
import math
from fractions import Fraction


def scheduler_boundary_iters(epochs: float, epoch_length: int) -> int:
    """Iteration of an epoch-based scheduler boundary: rounded up, and at least 2 when positive.

    Two iterations let a warm-up start low and reach the base lr (see module doc). The 1e-6 keeps
    float noise in an exact product (``0.03 * 200``) from rounding up one more iteration.
    """
    if epochs <= 0:
        return 0
    return max(2, math.ceil(epochs * epoch_length - 1e-6))


def _exact_phase(cfg: dict, epoch_length: int, max_epochs) -> dict:
    from mmengine.optim.scheduler.param_scheduler import INF

    if not (cfg.get('convert_to_iter_based') and cfg.get('by_epoch', True)):
        return cfg
    cfg = copy.copy(cfg)
    if 'end' not in cfg and max_epochs is not None:
        cfg['end'] = max_epochs  # the default mmengine gives an epoch-based phase
    begin = scheduler_boundary_iters(cfg.get('begin', 0), epoch_length)
    cfg['begin'] = Fraction(begin, epoch_length)
    if cfg.get('end', INF) != INF:
        # a phase squeezed out by a tiny run must stay valid (mmengine raises on end <= begin)
        cfg['end'] = Fraction(max(scheduler_boundary_iters(cfg['end'], epoch_length), begin + 1), epoch_length)
    return cfg


def exact_boundaries(param_scheduler, epoch_length: int, max_epochs=None):
    """A copy of a config's ``param_scheduler`` (a phase, a list of them, or a dict of those per
    optimizer) whose ``convert_to_iter_based`` phases begin and end on whole iterations (module doc).

    ``max_epochs`` is the ``end`` of a phase that gives none (mmengine's default); built schedulers
    and iteration-based phases pass through unchanged.
    """
    if isinstance(param_scheduler, dict) and 'type' in param_scheduler:
        return _exact_phase(param_scheduler, epoch_length, max_epochs)
    if isinstance(param_scheduler, dict):  # one entry per optimizer of an OptimWrapperDict
        return {name: exact_boundaries(value, epoch_length, max_epochs) for name, value in param_scheduler.items()}
    if isinstance(param_scheduler, (list, tuple)):
        return [exact_boundaries(phase, epoch_length, max_epochs) for phase in param_scheduler]
    return param_scheduler
