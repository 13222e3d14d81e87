"""``Runner``: the runner of a run without ``--deepspeed``: mmengine's ``Runner`` with two public
methods overridden (under ``--deepspeed``, ``deepspeed.DeepSpeedStrategy`` does the same two).

- ``load_checkpoint`` (``load_from`` and resume both go through it): the checkpoint's weights are
  checked against the model before mmengine's non-strict load, which only logs what did not fit
  and would train on from a partly initialised model (``mmllava.checkpoints.load_checkpoint_to_model``).
- ``build_param_scheduler``: epoch-based phases begin and end on the iterations that
  ``engine.schedule`` chooses (mmengine truncates a 0.03-epoch warm-up to 0 or 1 iteration).

See docs/mmengine_compat.md for why these are overrides and not patches of mmengine.
"""
from __future__ import annotations

from mmengine.model import is_model_wrapper
from mmengine.runner import Runner as _MMEngineRunner
from mmengine.runner.checkpoint import CheckpointLoader

from mmllava.checkpoints import load_checkpoint_to_model
from mmllava.engine.schedule import exact_boundaries


class Runner(_MMEngineRunner):
    """mmengine's ``Runner`` with checked checkpoint loading and whole-iteration schedule phases."""

    def load_checkpoint(self, filename: str, map_location='cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):  # noqa: B006 (mmengine's signature)
        """mmengine's ``Runner.load_checkpoint``, with the weights checked against the model first.

        mmengine's own body is these steps with ``_load_checkpoint_to_model``; ``resume`` calls this
        method. (It also sets the private ``_has_loaded``, which ``load_or_resume`` and ``resume``
        set themselves after calling it.)
        """
        checkpoint = CheckpointLoader.load_checkpoint(filename, map_location=map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        checkpoint = load_checkpoint_to_model(model, checkpoint, strict, revise_keys=revise_keys)
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint

    def build_param_scheduler(self, scheduler):
        """mmengine's, on the config's phases with whole-iteration boundaries (``engine.schedule``)."""
        return super().build_param_scheduler(
            exact_boundaries(scheduler, len(self.train_dataloader), self.max_epochs))
