"""Training engine: mmengine runner construction, compatibility fixes, DeepSpeed, hooks, checkpoints.

Configs import their runtime pieces from here::

    from mmllava.engine import (CheckpointHook, DatasetInfoHook, EvaluateChatHook, ThroughputHook, TrainLoop,
                                TrainSummaryHook, mixed_precision_optim_wrapper)

(A config written for XTuner or mmengine gets them substituted at ``train``, one log line each:
``mmllava.engine.runner.prepare_config``.)
The names resolve lazily, so importing ``mmllava.engine.launch`` (the torchrun re-launch) does
not import mmengine or DeepSpeed.
"""
import importlib

_EXPORTS = {'CheckpointHook': 'checkpoint_hook', 'DatasetInfoHook': 'hooks', 'EvaluateChatHook': 'hooks',
            'ThroughputHook': 'hooks', 'TrainLoop': 'loops', 'TrainSummaryHook': 'console',
            'mixed_precision_optim_wrapper': 'wrappers'}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'mmllava.engine.{_EXPORTS[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
