"""What a config says about the model it trains, read from ``cfg.model`` without building it.

``ModelSpec`` holds the meta-device modules (``mmllava.plan.architecture``) and the switches that
decide memory: dtypes, 4-bit quantisation, frozen parts, LoRA, activation checkpointing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmllava.errors import MMLLaVAError


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

    @property
    def attn_implementation(self) -> str:
        return getattr(self.llm.config, '_attn_implementation', None) or 'sdpa'


def _dtype(value, default):
    import torch

    if value is None or value == 'auto':
        return default
    if isinstance(value, str):
        return getattr(torch, value.removeprefix('torch.'))
    return value


def _type_name(obj) -> str:
    obj_type = obj.get('type') if isinstance(obj, dict) else None
    return obj_type if isinstance(obj_type, str) else getattr(obj_type, '__name__', '')


def _lora(cfg) -> LoraSpec | None:
    if cfg is None:
        return None
    if not isinstance(cfg, dict):  # an already built LoraConfig
        cfg = vars(cfg)
    targets = cfg.get('target_modules')
    if isinstance(targets, str):
        targets = (targets,)
    return LoraSpec(int(cfg.get('r', 8)), float(cfg.get('lora_dropout', 0.0) or 0.0),
                    None if targets is None else tuple(targets))


def _quant(cfg) -> dict | None:
    import torch

    if not cfg:
        return None
    if not isinstance(cfg, dict):
        cfg = cfg.to_dict()
    if cfg.get('load_in_8bit'):
        raise MMLLaVAError('model.llm.quantization_config: load_in_8bit is not planned (NF4/FP4 4-bit only)')
    if not cfg.get('load_in_4bit'):
        return None
    return {'double_quant': bool(cfg.get('bnb_4bit_use_double_quant')),
            'compute_dtype': _dtype(cfg.get('bnb_4bit_compute_dtype'), torch.float32)}


def read_model_spec(cfg) -> ModelSpec:
    """``cfg.model`` as a ``ModelSpec``; its folders are read for their ``config.json`` only."""
    import torch

    from mmllava.plan.architecture import meta_clip, meta_internvl, meta_llm, read_architecture

    model = cfg.get('model')
    kind = _type_name(model)
    if kind not in ('LLaVAModel', 'InternVLModel'):
        raise MMLLaVAError(f'{cfg.filename}: model.type must be LLaVAModel or InternVLModel to plan, got {kind!r}')
    common = dict(freeze_llm=bool(model.get('freeze_llm', kind == 'InternVLModel')),
                  freeze_vision=bool(model.get('freeze_visual_encoder', kind == 'InternVLModel')),
                  llm_lora=_lora(model.get('llm_lora')), vision_lora=_lora(model.get('visual_encoder_lora')),
                  checkpointing=bool(model.get('use_activation_checkpointing', True)),
                  loss_chunk_size=int(model.get('loss_chunk_size', 4096)))
    if kind == 'LLaVAModel':
        llm_cfg, vision_cfg = model['llm'], model['visual_encoder']
        llm_arch = read_architecture(llm_cfg.get('path'), 'llm_name_or_path')
        vision_arch = read_architecture(vision_cfg.get('path'), 'visual_encoder_name_or_path')
        llm, vision = meta_llm(llm_arch.config), meta_clip(vision_arch.config)
        from mmllava.models.projector import Projector

        with torch.device('meta'):
            projector = Projector(vision.config.hidden_size, llm.config.hidden_size,
                                  depth=model.get('projector_depth', 2))
        quant = _quant(llm_cfg.get('quantization_config'))
        llm_dtype = _dtype(llm_cfg.get('torch_dtype'), torch.float32)
        vision_dtype = _dtype(vision_cfg.get('torch_dtype'), torch.float32)
        select = int(model.get('visual_select_layer', -2))
        layers = vision.config.num_hidden_layers
        side = vision.config.image_size // vision.config.patch_size
        return ModelSpec('llava', llm, vision, projector, llm_dtype, vision_dtype,
                         torch.float32 if quant else llm_dtype, quant, **common,
                         vision_layers_used=layers + 1 + select if select < 0 else select,
                         image_tokens_per_tile=side * side, tile_positions=side * side + 1,
                         sources=[llm_arch.source, vision_arch.source])
    internvl_cfg = model['internvl']
    arch = read_architecture(internvl_cfg.get('path'), 'path')
    parts = meta_internvl(arch.config)
    dtype = _dtype(internvl_cfg.get('torch_dtype'), torch.float32)
    native = parts['config']
    vcfg = native.vision_config
    size = vcfg.image_size[0] if isinstance(vcfg.image_size, (list, tuple)) else vcfg.image_size
    patch = vcfg.patch_size[0] if isinstance(vcfg.patch_size, (list, tuple)) else vcfg.patch_size
    side = size // patch
    layer = native.vision_feature_layer
    return ModelSpec('internvl', parts['llm'], parts['vision'], parts['projector'], dtype, dtype, dtype,
                     _quant(internvl_cfg.get('quantization_config')), **common,
                     vision_layers_used=vcfg.num_hidden_layers + 1 + layer if layer < 0 else layer,
                     image_tokens_per_tile=int(side * side * native.downsample_ratio ** 2),
                     tile_positions=side * side + 1, sources=[arch.source])
