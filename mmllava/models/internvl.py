"""InternVL2: InternViT -> pixel shuffle -> MLP projector -> LLM, every part a transformers-native module.

Read top to bottom: construction (load the official folder as native parts, freeze, quantise,
LoRA, load our trained weights) and image encoding. The embedding splice, the training loss
(logits only where a label is), generation and the trained-only state dict are shared with LLaVA
(``mmllava.models.base``).

One image is cut into tiles by ``mmllava.data.internvl_image``; each tile is one row of
``pixel_values`` and becomes ``(image_size / patch)^2 x downsample_ratio^2`` features (InternVL2:
256). Batches concatenate the tiles of all their images in order, matching the order of the
``IMAGE_TOKEN_INDEX`` runs in ``input_ids``.
"""
from __future__ import annotations

import torch
from torch import nn

from mmllava.checkpoints import load_state_dict_file
from mmllava.config import build
from mmllava.errors import concerning
from mmllava.formats.strict import check_trained_parts, shapes
from mmllava.models.base import MultimodalModel


def pixel_shuffle(features: torch.Tensor, scale: float) -> torch.Tensor:
    """``[N, W, H, C] -> [N, W x scale, H x scale, C / scale^2]`` in InternVL's ``ps_version='v2'`` order.

    With ``scale=0.5`` each output vector concatenates a 2x2 block of neighbouring patch features;
    the permutes keep the block's spatial layout as InternVL (and transformers' port) do.
    """
    n, w, h, c = features.shape
    x = features.reshape(n, w, int(h * scale), int(c / scale))
    x = x.permute(0, 2, 1, 3).reshape(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
    return x.permute(0, 2, 1, 3)


class InternVLModel(MultimodalModel):
    """InternVL2 for training with mmengine.

    Args:
        internvl: :class:`~mmllava.pretrained.internvl_folder.InternVLParts` or its config
            ``dict(type=load_internvl, path=..., torch_dtype=..., quantization_config=...)``.
        freeze_llm / freeze_visual_encoder: keep those weights fixed (LoRA adapters still train).
            The projector (``mlp1``) always trains, as in XTuner's InternVL recipes.
        llm_lora / visual_encoder_lora: PEFT ``LoraConfig`` (or its config dict) to add adapters;
            ``target_modules=None`` means every Linear layer (the LM head excluded).
        pretrained_pth: trained weights to start from (our ``iter_N.pth``, a DeepSpeed checkpoint folder
            or a work dir, meaning its last checkpoint).
        use_activation_checkpointing: gradient checkpointing in the LLM (and a trained vision tower).
        loss_chunk_size: labelled positions per LM-head chunk (bounds the logits memory).
    """

    def __init__(self, internvl, freeze_llm: bool = True, freeze_visual_encoder: bool = True, llm_lora=None,
                 visual_encoder_lora=None, pretrained_pth: str | None = None,
                 use_activation_checkpointing: bool = True, loss_chunk_size: int = 4096):
        super().__init__()
        parts = build(internvl)
        self.config = parts.config  # native InternVLConfig: vision/text configs, downsample_ratio, feature layer
        self.official_config = parts.official_config  # tiling settings and template, for exports
        self.source = parts.path
        self.vision_tower = parts.vision_tower
        self.projector = parts.projector
        self.llm = parts.llm
        self.freeze_llm = freeze_llm
        self.freeze_visual_encoder = freeze_visual_encoder
        self.loss_chunk_size = loss_chunk_size

        self.vision_tower = self._setup_training(self.vision_tower, freeze_llm, freeze_visual_encoder,
                                                 use_activation_checkpointing, llm_lora, visual_encoder_lora)
        if pretrained_pth is not None:
            self.load_pretrained(pretrained_pth)

    # ------------------------------------------------------------------ weights
    def load_pretrained(self, path: str, setting: str = 'pretrained_pth') -> None:
        """Load trained weights saved by this model: any of its parts, each complete and of the right shapes
        (``mmllava.formats.strict.check_trained_parts``). ``setting`` names where ``path`` came from in
        errors (``convert`` gives ``checkpoint``)."""
        with concerning(setting, path):
            state = load_state_dict_file(path)
            check_trained_parts(setting, path, shapes(nn.Module.state_dict(self)), shapes(state))
        nn.Module.load_state_dict(self, state, strict=False)

    # ------------------------------------------------------------------ images
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tiles ``[N, 3, S, S]`` -> features ``[N, tokens_per_tile, llm_hidden]``: InternViT (CLS dropped),
        pixel shuffle, then the projector."""
        layer = self.config.vision_feature_layer
        vision_dtype = next(self.vision_tower.parameters()).dtype
        out = self.vision_tower(pixel_values.to(vision_dtype), output_hidden_states=layer != -1)
        features = (out.last_hidden_state if layer == -1 else out.hidden_states[layer])[:, 1:]
        side = int(features.shape[1] ** 0.5)
        features = pixel_shuffle(features.reshape(features.shape[0], side, side, -1), self.config.downsample_ratio)
        features = features.reshape(features.shape[0], -1, features.shape[-1])
        return self.projector(features.to(self.projector.linear_1.weight.dtype))

    def _unused_branch_zero(self) -> torch.Tensor:
        """0 x every trained parameter of the image branch, for text-only batches (see the base class)."""
        branch = [*self.projector.parameters(), *self.vision_tower.parameters()]
        return sum(p.sum() for p in branch if p.requires_grad) * 0.0
