"""What a config says about the model it trains, read from ``cfg.model`` without building it.

``ModelSpec`` holds the meta-device modules (``mmllava.plan.architecture``) and the switches that
decide memory: dtypes, 4-bit quantisation, frozen parts, LoRA, activation checkpointing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmllava.errors import MMLLaVAError
from mmllava.plan.architecture import meta_clip, meta_internvl, meta_llm, read_architecture


@dataclass
class LoraSpec:
    """A LoRA config's memory-relevant fields (``target_modules=None``: every Linear but the head)."""

    r: int
    dropout: float
    targets: tuple[str, ...] | None

    def targets_leaf(self, leaf: str) -> bool:
        return self.targets is None or leaf in self.targets


@dataclass
class ModelSpec:
    """The parts of a ``LLaVAModel`` / ``InternVLModel`` config (meta modules) and its switches."""

    family: str  # 'llava' | 'internvl'
    llm: Any
    vision: Any
    projector: Any
    llm_dtype: Any
    vision_dtype: Any
    projector_dtype: Any
    quant: dict | None  # {'double_quant': bool, 'compute_dtype': torch.dtype} for 4-bit NF4/FP4
    freeze_llm: bool
    freeze_vision: bool
    llm_lora: LoraSpec | None
    vision_lora: LoraSpec | None
    checkpointing: bool
    loss_chunk_size: int
    vision_layers_used: int  # vision layers whose output reaches the loss
    image_tokens_per_tile: int
    tile_positions: int  # positions one image (tile) takes in the vision tower, CLS included
    sources: list[str] = field(default_factory=list)
    attention: str | None = None  # the config's ``attn_implementation``, if it names one

    @property
    def attn_implementation(self) -> str:
        """The LLM's attention kernel: the config's choice, else SDPA (flash-attention-2 saves the same)."""
        return self.attention or 'sdpa'


def _get(mapping, key, default=None):
    """``mapping[key]`` without building mmengine's lazy imports: reading ``type=LLaVAModel`` must not
    import the model code (mmengine's model registry imports torch's compiler: seconds)."""
    return dict.get(mapping, key, default) if isinstance(mapping, dict) else default


def _dtype(value, default):
    if value is None or str(value) == 'auto':
        return default
    if isinstance(value, torch.dtype):
        return value
    return getattr(torch, str(value).removeprefix('torch.'))  # a name or mmengine's lazy ``torch.bfloat16``


def _type_name(obj) -> str:
    obj_type = _get(obj, 'type')
    if isinstance(obj_type, str):
        return obj_type.rsplit('.', 1)[-1]
    return getattr(obj_type, '_imported', None) or getattr(obj_type, '__name__', '')


def meta_projector(visual_hidden: int, llm_hidden: int, depth: int):
    """LLaVA's projector on the meta device: the layout of ``mmllava.models.projector.Projector``
    (Linear, then (GELU, Linear) x depth-1), built here because importing ``mmllava.models`` loads
    mmengine's model registry."""
    with torch.device('meta'):
        layers = [nn.Linear(visual_hidden, llm_hidden)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(llm_hidden, llm_hidden)]
        return nn.Sequential(*layers)


def _lora(cfg) -> LoraSpec | None:
    if cfg is None:
        return None
    if not isinstance(cfg, dict):  # an already built LoraConfig
        cfg = vars(cfg)
    targets = _get(cfg, 'target_modules')
    if isinstance(targets, str):
        targets = (targets,)
    return LoraSpec(int(_get(cfg, 'r', 8)), float(_get(cfg, 'lora_dropout', 0.0) or 0.0),
                    None if targets is None else tuple(targets))


def _quant(cfg) -> dict | None:
    if not cfg:
        return None
    if not isinstance(cfg, dict):
        cfg = cfg.to_dict()
    if _get(cfg, 'load_in_8bit'):
        raise MMLLaVAError('model.llm.quantization_config: load_in_8bit is not planned (NF4/FP4 4-bit only)')
    if not _get(cfg, 'load_in_4bit'):
        return None
    return {'double_quant': bool(_get(cfg, 'bnb_4bit_use_double_quant')),
            'compute_dtype': _dtype(_get(cfg, 'bnb_4bit_compute_dtype'), torch.float32)}


def read_model_spec(cfg) -> ModelSpec:
    """``cfg.model`` as a ``ModelSpec``; its folders are read for their ``config.json`` only."""
    model = _get(cfg._cfg_dict if hasattr(cfg, '_cfg_dict') else cfg, 'model')
    kind = _type_name(model)
    if kind not in ('LLaVAModel', 'InternVLModel'):
        raise MMLLaVAError(f'{cfg.filename}: model.type must be LLaVAModel or InternVLModel to plan, got {kind!r}')
    common = dict(freeze_llm=bool(_get(model, 'freeze_llm', kind == 'InternVLModel')),
                  freeze_vision=bool(_get(model, 'freeze_visual_encoder', kind == 'InternVLModel')),
                  llm_lora=_lora(_get(model, 'llm_lora')), vision_lora=_lora(_get(model, 'visual_encoder_lora')),
                  checkpointing=bool(_get(model, 'use_activation_checkpointing', True)),
                  loss_chunk_size=int(_get(model, 'loss_chunk_size', 4096)))
    if kind == 'LLaVAModel':
        llm_cfg, vision_cfg = _get(model, 'llm'), _get(model, 'visual_encoder')
        llm_arch = read_architecture(_get(llm_cfg, 'path'), 'llm_name_or_path')
        vision_arch = read_architecture(_get(vision_cfg, 'path'), 'visual_encoder_name_or_path')
        llm, vision = meta_llm(llm_arch.config), meta_clip(vision_arch.config)
        projector = meta_projector(vision.config.hidden_size, llm.config.hidden_size, _get(model, 'projector_depth', 2))
        quant = _quant(_get(llm_cfg, 'quantization_config'))
        llm_dtype = _dtype(_get(llm_cfg, 'torch_dtype'), torch.float32)
        vision_dtype = _dtype(_get(vision_cfg, 'torch_dtype'), torch.float32)
        select = int(_get(model, 'visual_select_layer', -2))
        layers = vision.config.num_hidden_layers
        side = vision.config.image_size // vision.config.patch_size
        return ModelSpec('llava', llm, vision, projector, llm_dtype, vision_dtype,
                         torch.float32 if quant else llm_dtype, quant, **common,
                         vision_layers_used=layers + 1 + select if select < 0 else select,
                         image_tokens_per_tile=side * side, tile_positions=side * side + 1,
                         sources=[llm_arch.source, vision_arch.source],
                         attention=_get(llm_cfg, 'attn_implementation'))
    internvl_cfg = _get(model, 'internvl')
    arch = read_architecture(_get(internvl_cfg, 'path'), 'path')
    parts = meta_internvl(arch.config)
    dtype = _dtype(_get(internvl_cfg, 'torch_dtype'), torch.float32)
    native = parts['config']
    vcfg = native.vision_config
    size = vcfg.image_size[0] if isinstance(vcfg.image_size, (list, tuple)) else vcfg.image_size
    patch = vcfg.patch_size[0] if isinstance(vcfg.patch_size, (list, tuple)) else vcfg.patch_size
    side = size // patch
    layer = native.vision_feature_layer
    return ModelSpec('internvl', parts['llm'], parts['vision'], parts['projector'], dtype, dtype, dtype,
                     _quant(_get(internvl_cfg, 'quantization_config')), **common,
                     vision_layers_used=vcfg.num_hidden_layers + 1 + layer if layer < 0 else layer,
                     image_tokens_per_tile=int(side * side * native.downsample_ratio ** 2),
                     tile_positions=side * side + 1, sources=[arch.source],
                     attention=_get(internvl_cfg, 'attn_implementation'))
