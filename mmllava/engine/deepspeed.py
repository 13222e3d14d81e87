"""DeepSpeed: the shipped ZeRO configs, filling their "auto" fields from a config, and the strategy.

``--deepspeed`` takes ``zero1|zero2|zero3|zero2_offload|zero3_offload`` (also spelled
``deepspeed_zero2`` as in XTuner) or a JSON file. "auto" fields follow the mmllava config:
micro batch = ``train_dataloader.batch_size``, gradient accumulation = ``accumulative_counts``,
clipping = ``clip_grad.max_norm``; precision = bf16 on CUDA devices that support it, else fp16
on CUDA, fp32 on CPU.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from mmengine._strategy import DeepSpeedStrategy as _MMEngineDeepSpeedStrategy
from transformers.integrations.deepspeed import HfDeepSpeedConfig

from mmllava.checkpoints import (SOURCE_KEY, check_checkpoint_fits, load_checkpoint_file, load_checkpoint_to_model,
                                 resolve_checkpoint, safe_torch_load)
from mmllava.engine import compat
from mmllava.engine.schedule import exact_boundaries
from mmllava.errors import MMLLaVAError

CONFIG_DIR = Path(__file__).with_name('deepspeed_configs')


def shipped_deepspeed_configs() -> list[str]:
    """Names accepted by ``--deepspeed`` (without the optional ``deepspeed_`` prefix)."""
    return sorted(p.stem for p in CONFIG_DIR.glob('*.json'))


def find_deepspeed_config(name_or_path: str) -> Path:
    """A shipped config name (``zero2``, ``deepspeed_zero2``) or a JSON file path."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = name_or_path.removeprefix('deepspeed_').removesuffix('.json')
    if (CONFIG_DIR / f'{name}.json').is_file():
        return CONFIG_DIR / f'{name}.json'
    choices = ', '.join(shipped_deepspeed_configs())
    raise MMLLaVAError(f'--deepspeed {name_or_path}: neither a JSON file nor a shipped config ({choices}, '
                       'optionally prefixed deepspeed_)')


def _fill(ds: dict, key: str, value) -> None:
    if ds.get(key, 'auto') == 'auto':
        ds[key] = value


def resolve_deepspeed_config(name_or_path: str, cfg) -> dict:
    """The DeepSpeed config dict for ``cfg``: a shipped or user JSON with "auto" fields filled."""
    path = find_deepspeed_config(name_or_path)
    try:
        ds = json.loads(path.read_text(encoding='utf-8'))
    except json.JSONDecodeError as e:
        raise MMLLaVAError(f'{path}: not valid JSON: {e}') from None
    optim_wrapper = cfg.get('optim_wrapper') or {}
    clip_grad = optim_wrapper.get('clip_grad') or {}
    _fill(ds, 'train_micro_batch_size_per_gpu', cfg.train_dataloader.get('batch_size', 1))
    _fill(ds, 'gradient_accumulation_steps', optim_wrapper.get('accumulative_counts', 1))
    _fill(ds, 'gradient_clipping', clip_grad.get('max_norm', 0.0))
    if ds.get('train_batch_size') == 'auto':
        del ds['train_batch_size']  # DeepSpeed derives it from micro batch x accumulation x world size
    on_cuda = torch.cuda.is_available()
    bf16 = on_cuda and torch.cuda.is_bf16_supported()
    for key, wanted in (('bf16', bf16), ('fp16', on_cuda and not bf16)):
        section = ds.setdefault(key, {})
        if section.get('enabled', 'auto') == 'auto':
            section['enabled'] = wanted
    ds.setdefault('zero_allow_untested_optimizer', True)  # we pass the config's torch optimizer
    ds.setdefault('steps_per_print', 10 ** 10)  # mmengine's LoggerHook logs; silence DeepSpeed's own
    return ds


ONEBIT_MODULE = 'deepspeed.runtime.fp16.onebit'


def register_deepspeed_optimizers() -> list[str]:
    """What mmengine's ``register_deepspeed_optimizers`` registers, minus the 1-bit optimizers
    DeepSpeed 0.19 removed: configs can still name ``FusedAdam``, ``FusedLamb``, ``DeepSpeedCPUAdam``."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
    from deepspeed.ops.lamb import FusedLamb
    from mmengine.registry import OPTIMIZERS

    for cls in (DeepSpeedCPUAdam, FusedAdam, FusedLamb):
        if OPTIMIZERS.get(cls.__name__) is None:
            OPTIMIZERS.register_module(module=cls)
    return ['DeepSpeedCPUAdam', 'FusedAdam', 'FusedLamb']


class DeepSpeedStrategy(_MMEngineDeepSpeedStrategy):
    """mmengine's DeepSpeed strategy, working with DeepSpeed 0.19, on CPU, with safe, hooked checkpoints.

    (The class keeps mmengine's name: ``FlexibleRunner`` recognises DeepSpeed strategies by it.)
    - construction: ``compat.apply()`` first; mmengine's constructor fails at its last step, on the
      1-bit optimizers DeepSpeed 0.19 removed: the others are registered instead; ZeRO-3 keeps a
      ``HfDeepSpeedConfig`` alive so transformers builds partitioned models;
    - schedules: epoch-based phases begin and end on whole iterations (``engine.schedule``);
    - distributed init without CUDA: ``launch.init_cpu_process_group`` starts it before the runner;
    - checkpoints: DeepSpeed's checkpoint engine unpickles everything (``weights_only=False``):
      it is replaced by ``safe_torch_load``; mmengine skips the ``before_save_checkpoint`` and
      ``after_load_checkpoint`` hooks under DeepSpeed: they are called; ``load_from`` and resume
      take every input ``mmllava.checkpoints.resolve_checkpoint`` does (a plain ``.pth`` file is
      loaded non-strictly into the module).
    """

    def __init__(self, **kwargs):
        compat.apply()
        if isinstance(kwargs.get('config'), dict):  # a ConfigDict would be pickled into every checkpoint
            kwargs['config'] = json.loads(json.dumps(kwargs['config']))
        try:
            super().__init__(**kwargs)
        except ModuleNotFoundError as error:
            # mmengine's constructor ends with register_deepspeed_optimizers(), which imports the
            # 1-bit optimizers that DeepSpeed 0.19 removed (docs/mmengine_compat.md)
            if error.name != ONEBIT_MODULE:
                raise
            register_deepspeed_optimizers()
        if self.config.get('zero_optimization', {}).get('stage') == 3:
            self.hf_deepspeed_config = HfDeepSpeedConfig(self.config)

    def build_param_scheduler(self, scheduler, optim_wrapper, default_args=None):
        """mmengine's, on the config's phases with whole-iteration boundaries (``engine.schedule``)."""
        if 'epoch_length' in self.dispatch_kwargs:
            scheduler = exact_boundaries(scheduler, self.dispatch_kwargs['epoch_length'],
                                         self.dispatch_kwargs.get('max_epochs'))
        return super().build_param_scheduler(scheduler, optim_wrapper, default_args)

    def _wrap_model(self, model):
        wrapper = super()._wrap_model(model)
        _use_safe_checkpoint_engine(wrapper.model)
        return wrapper

    def save_checkpoint(self, filename, *, save_optimizer=True, save_param_scheduler=True, extra_ckpt=None,
                        callback=None):
        extra_ckpt = {} if extra_ckpt is None else extra_ckpt
        if callback is not None:
            callback(extra_ckpt)
        super().save_checkpoint(filename, save_optimizer=save_optimizer, save_param_scheduler=save_param_scheduler,
                                extra_ckpt=extra_ckpt)

    def resume(self, filename, *, resume_optimizer=True, resume_param_scheduler=True, map_location='default',
               callback=None):
        filename = str(resolve_checkpoint(filename, 'resume'))  # the folder DeepSpeed reads
        _check_folder_fits(self.model.module, filename)
        checkpoint = super().resume(filename, resume_optimizer=resume_optimizer,
                                    resume_param_scheduler=resume_param_scheduler)
        if callback is not None:
            callback(checkpoint)
        return checkpoint

    def load_checkpoint(self, filename, *, map_location='cpu', strict=False, revise_keys=[(r'^module.', '')],
                        callback=None):
        filename = str(resolve_checkpoint(filename, 'load_from'))
        if os.path.isdir(filename):
            _check_folder_fits(self.model.module, filename)
            checkpoint = super().load_checkpoint(filename)
        else:
            self.logger.info(f'Load checkpoint from {filename}')
            checkpoint = load_checkpoint_file(filename, map_location='cpu')
            load_checkpoint_to_model(self.model.module, checkpoint, strict=False, revise_keys=revise_keys)
        if callback is not None:
            callback(checkpoint)
        return checkpoint


def _check_folder_fits(model, folder) -> None:
    """DeepSpeed loads module states non-strictly (frozen parameters are left out of the files):
    check a checkpoint folder's weights against the model first (``check_checkpoint_fits``)."""
    checkpoint = load_checkpoint_file(folder, map_location='cpu')
    state = checkpoint['state_dict']
    if any(t.numel() == 0 for t in state.values()):
        return  # ZeRO-3: the file holds empty placeholders; the weights are in the partitioned shards
    check_checkpoint_fits(model, state, checkpoint.pop(SOURCE_KEY, folder))


class SafeTorchCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with ``safe_torch_load`` (it unpickles anything)."""

    def load(self, path, map_location=None):
        return safe_torch_load(path, map_location=map_location)


def _use_safe_checkpoint_engine(engine) -> None:
    if type(engine.checkpoint_engine) is TorchCheckpointEngine:
        engine.checkpoint_engine = SafeTorchCheckpointEngine(engine._config)
