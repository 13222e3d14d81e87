"""``mmllava convert pth_to_hf``: a training checkpoint + its config -> an export folder.

The model is built from the config with ``pretrained_pth`` disabled (the checkpoint replaces it),
then the checkpoint is loaded through the key styles of ``mmllava.formats.llava_projector``: our
``iter_N.pth`` files, DeepSpeed checkpoint folders, a work dir (its last checkpoint), XTuner's
``iter_N.pth`` projector files. Exports merge in place, so memory stays near one model copy.
InternVL configs export through ``mmllava.convert.internvl_export`` (``official`` by default).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from mmllava.checkpoints import resolve_checkpoint
from mmllava.errors import MMLLaVAError

SAVE_FORMATS = ('xtuner', 'huggingface', 'official')
_FP16_NAMES = ('float16', 'torch.float16', 'fp16')


def export_dtype(cfg, fp32: bool) -> torch.dtype:
    """float32 with ``--fp32``; else float16 when the config trained in fp16, bfloat16 otherwise."""
    if fp32:
        return torch.float32
    llm = cfg.model.get('llm') or cfg.model.get('internvl')  # where the LLM's dtype is set
    trained = [str(cfg.get('optim_wrapper', {}).get('dtype')),
               str(llm.get('torch_dtype') if isinstance(llm, dict) else None)]
    return torch.float16 if any(name in _FP16_NAMES for name in trained) else torch.bfloat16


def load_trained_model(config: str | os.PathLike, checkpoint: str | os.PathLike, cfg_options: dict | None = None):
    """Build the LLaVA or InternVL model of ``config`` and load ``checkpoint`` into it; returns ``(model, cfg)``."""
    from mmllava.config import build, load_config
    from mmllava.config_errors import reported_config_errors
    from mmllava.models import InternVLModel, LLaVAModel

    checkpoint = resolve_checkpoint(checkpoint)  # before the slow model build
    cfg = load_config(config, cfg_options)
    if cfg.get('model', {}).get('type') not in (LLaVAModel, InternVLModel):
        raise MMLLaVAError(f'{cfg.filename}: convert pth_to_hf supports LLaVA and InternVL configs '
                           '(model.type=LLaVAModel or InternVLModel)')
    cfg.model.pretrained_pth = None
    with reported_config_errors(cfg, builds='model'):  # a missing model folder names its config variable
        print(f'Building the model of {Path(cfg.filename).name}', flush=True)
        model = build(cfg.model)
        print(f'Loading {checkpoint}', flush=True)
        model.load_pretrained(str(checkpoint), setting='checkpoint')  # errors name the file as `checkpoint`
    model.eval()
    return model, cfg


def pth_to_hf(config: str | os.PathLike, checkpoint: str | os.PathLike, save_dir: str | os.PathLike,
              save_format: str | None = None, fp32: bool = False, max_shard_size: str | int = '2GB',
              cfg_options: dict | None = None, internvl_only: bool = False) -> Path:
    """Convert ``checkpoint`` (trained with ``config``) into ``save_dir`` in ``save_format``
    (default: ``xtuner`` for LLaVA, ``official`` for InternVL). ``internvl_only`` refuses LLaVA
    configs (``convert internvl_to_official``)."""
    from mmllava.config import build
    from mmllava.convert.shards import parse_size
    from mmllava.models import InternVLModel
    from mmllava.templates import get_template

    if save_format is not None and save_format not in SAVE_FORMATS:
        raise MMLLaVAError(f'--save-format must be one of {", ".join(SAVE_FORMATS)}, got {save_format!r}')
    parse_size(max_shard_size)  # fail before the slow part
    model, cfg = load_trained_model(config, checkpoint, cfg_options)
    if internvl_only and not isinstance(model, InternVLModel):
        raise MMLLaVAError(f'{cfg.filename}: internvl_to_official needs an InternVL config (model.type=InternVLModel); '
                           'for LLaVA use convert pth_to_hf')
    template = get_template(cfg.get('prompt_template')).name
    dtype = export_dtype(cfg, fp32)
    tokenizer, image_processor = build(cfg.tokenizer), build(cfg.image_processor)
    if isinstance(model, InternVLModel):
        from mmllava.convert.internvl_export import export_internvl

        export_internvl(model, tokenizer, image_processor, save_format or 'official', save_dir, dtype, template,
                        max_shard_size)
    elif (save_format or 'xtuner') == 'xtuner':
        from mmllava.convert.xtuner_layout import export_xtuner

        export_xtuner(model, cfg, tokenizer, image_processor, template, save_dir, dtype, max_shard_size)
    else:
        from mmllava.convert.merge import merge_lora

        vision_trained = model.use_visual_encoder_lora or not model.freeze_visual_encoder
        print('Merging LoRA' if model.use_llm_lora or model.use_visual_encoder_lora else 'Preparing weights',
              flush=True)
        model.llm = merge_lora(model.llm, dtype)
        model.visual_encoder = merge_lora(model.visual_encoder, dtype)
        if save_format == 'huggingface':
            from mmllava.convert.hf_llava import export_hf_llava

            export_hf_llava(model, tokenizer, image_processor, template, save_dir, dtype, max_shard_size)
        else:
            from mmllava.convert.official_llava import export_official
            from mmllava.data.packing import unpacked_dataset_cfg

            dataset = unpacked_dataset_cfg(cfg.get('train_dataloader', {}).get('dataset', {}))
            export_official(model, tokenizer, template, save_dir, dtype,
                            vision_source=str(cfg.get('visual_encoder_name_or_path')
                                              or model.visual_encoder.config._name_or_path),
                            vision_trained=vision_trained, image_processor=image_processor,
                            pad_image_to_square=bool(dataset.get('pad_image_to_square', True)),
                            max_shard_size=max_shard_size)
    print(f'All done: {save_dir}', flush=True)
    return Path(save_dir)
