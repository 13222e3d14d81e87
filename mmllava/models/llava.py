"""LLaVA: vision encoder -> projector -> LLM, every part a transformers-native module.

Read top to bottom: construction (build parts, freeze, quantise, LoRA, load pretrained weights),
image encoding and the embedding splice. The training loss (logits only where a label is),
generation and the trained-only state dict are shared with InternVL (``mmllava.models.base``).
"""
from __future__ import annotations

import torch
from torch import nn

from mmllava.checkpoints import load_state_dict_file
from mmllava.config import build
from mmllava.errors import MMLLaVAError, concerning
from mmllava.formats.llava_projector import split_projector_state, xtuner_weights_to_ours
from mmllava.formats.strict import check_trained_parts, shapes
from mmllava.models.base import MultimodalModel
from mmllava.models.lora import is_quantized
from mmllava.models.projector import Projector


class LLaVAModel(MultimodalModel):
    """LLaVA for training with mmengine.

    Args:
        llm: a causal LM or a config ``dict(type=load_llm, path=..., quantization_config=...)``.
        visual_encoder: a ``CLIPVisionModel`` or a config ``dict(type=load_vision_encoder, ...)``.
        freeze_llm / freeze_visual_encoder: keep those weights fixed (LoRA adapters still train).
        llm_lora / visual_encoder_lora: PEFT ``LoraConfig`` (or its config dict) to add adapters.
        pretrained_pth: weights to start from: our ``iter_N.pth``, an XTuner LLaVA checkpoint or an
            original-LLaVA ``mm_projector.bin`` (the projector and any other trained weights).
        visual_select_layer: vision hidden state used as image features (CLS dropped).
        projector_depth: number of Linear layers in the projector.
        use_activation_checkpointing: gradient checkpointing in the LLM (and a trained vision tower).
        loss_chunk_size: labelled positions per LM-head chunk; bounds the logits memory for large
            vocabularies (Llama-3: 128k) by recomputing each chunk in the backward pass.
    """

    def __init__(self, llm, visual_encoder, freeze_llm: bool = False, freeze_visual_encoder: bool = False,
                 visual_select_layer: int = -2, projector_depth: int = 2, pretrained_pth: str | None = None,
                 llm_lora=None, visual_encoder_lora=None, use_activation_checkpointing: bool = True,
                 loss_chunk_size: int = 4096):
        super().__init__()
        self.llm = build(llm)
        self.visual_encoder = build(visual_encoder)
        self.freeze_llm = freeze_llm
        self.freeze_visual_encoder = freeze_visual_encoder
        self.visual_select_layer = visual_select_layer
        self.loss_chunk_size = loss_chunk_size
        self.projector = Projector(self.visual_encoder.config.hidden_size, self.llm.config.hidden_size,
                                   depth=projector_depth)
        self.projector.to(self.llm.get_input_embeddings().weight.dtype if not is_quantized(self.llm)
                          else torch.float32)

        self.visual_encoder = self._setup_training(self.visual_encoder, freeze_llm, freeze_visual_encoder,
                                                   use_activation_checkpointing, llm_lora, visual_encoder_lora)
        if pretrained_pth is not None:
            self.load_pretrained(pretrained_pth)

    # ------------------------------------------------------------------ weights
    def load_pretrained(self, path: str, setting: str = 'pretrained_pth') -> None:
        """Load a projector (and any of our trained weights, or XTuner's LoRA adapters, InternLM2
        ``wqkv`` ones included) from ``path``; any format in ``mmllava.formats.llava_projector``. Each part the
        file holds must be complete and fit (``mmllava.formats.strict.check_trained_parts``).
        ``setting`` names where ``path`` came from in errors (``convert`` gives ``checkpoint``)."""
        with concerning(setting, path):
            state = load_state_dict_file(path)
            projector, rest, _ = split_projector_state(state)
            try:
                state = {**projector, **xtuner_weights_to_ours(rest, self.llm.config)}
            except MMLLaVAError as e:  # a packed wqkv that does not fit this LLM
                raise MMLLaVAError(f'{setting}: {path}: {e}') from None
            check_trained_parts(setting, path, shapes(nn.Module.state_dict(self)), shapes(state))
        nn.Module.load_state_dict(self, state, strict=False)

    def projector_keys(self) -> list[str]:
        """State-dict keys of the projector, in our naming."""
        return ['projector.' + k for k in self.projector.state_dict()]

    # ------------------------------------------------------------------ images
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels [N, 3, H, W] -> projected features [N, patches, llm_hidden] (CLS dropped)."""
        vision_dtype = next(self.visual_encoder.parameters()).dtype
        pixel_values = pixel_values.to(vision_dtype)
        clip = (self.visual_encoder.get_base_model() if hasattr(self.visual_encoder, 'get_base_model')
                else self.visual_encoder)
        tower = getattr(clip, 'vision_model', clip)  # transformers 4 nests the tower, 5 does not
        layers = tower.encoder.layers
        index = range(len(layers) + 1)[self.visual_select_layer]  # hidden state `index` is after `index` layers
        if (index < len(layers) and hasattr(tower, 'pre_layrnorm')  # CLIP's layout, called part by part
                and not (self.training and _draws_random_numbers(layers[index:]))):
            # The layers after the selected one cannot change the features (the default -2 skips
            # the last): leave them out. Exact, since they draw no dropout masks either.
            hidden = tower.pre_layrnorm(tower.embeddings(pixel_values))
            for layer in layers[:index]:
                hidden = layer(hidden, None)
            features = hidden[:, 1:]
        else:
            out = self.visual_encoder(pixel_values, output_hidden_states=True)
            features = out.hidden_states[index][:, 1:]
        return self.projector(features.to(self.projector[0].weight.dtype))

    def _unused_branch_zero(self) -> torch.Tensor:
        """0 x (projector / trained vision output) for text-only batches (see the base class)."""
        weight = self.projector[0].weight
        zero = self.projector(weight.new_zeros(1, 1, weight.shape[1])).sum() * 0.0
        if any(p.requires_grad for p in self.visual_encoder.parameters()):
            size = self.visual_encoder.config.image_size
            dummy = weight.new_zeros(1, 3, size, size)
            zero = zero + self.encode_images(dummy).sum() * 0.0
        return zero


def _draws_random_numbers(layers: nn.ModuleList) -> bool:
    """Whether a training forward of ``layers`` draws from the RNG (dropout with p > 0, LoRA's
    included): leaving such layers out would change every later random draw."""
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in layers.modules()) or any(
        getattr(getattr(layer, 'self_attn', None), 'dropout', 0) > 0 for layer in layers)
