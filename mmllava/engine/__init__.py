"""Training engine: mmengine runner construction, compatibility fixes, DeepSpeed, hooks, checkpoints.

Configs import their runtime pieces from here::

    from mmllava.engine import CheckpointHook, DatasetInfoHook, EvaluateChatHook, TrainLoop

(``mmengine.hooks.CheckpointHook`` in a config is swapped for the crash-safe one automatically.)
The names resolve lazily, so importing ``mmllava.engine.launch`` (the torchrun re-launch) does
not import mmengine or DeepSpeed.
"""
import importlib

_EXPORTS = {'CheckpointHook': 'checkpoint_hook', 'DatasetInfoHook': 'hooks', 'EvaluateChatHook': 'hooks',
            'ThroughputHook': 'hooks', 'TrainLoop': 'loops'}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'mmllava.engine.{_EXPORTS[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
