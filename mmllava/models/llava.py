"""LLaVA: vision encoder -> projector -> LLM, every part a transformers-native module.

Read top to bottom: construction (build parts, freeze, quantise, LoRA, load pretrained weights),
image encoding and embedding splice, the training loss (logits only where a label is), generation,
and the state dict that holds only what was trained.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmllava.config import build
from mmllava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mmllava.errors import MMLLaVAError
from mmllava.models.projector import Projector


def find_linear_names(module: nn.Module, exclude: tuple[str, ...] = ('lm_head', 'output')) -> list[str]:
    """Names (last component) of every Linear layer, for PEFT ``target_modules``.

    bitsandbytes' ``Linear4bit``/``Linear8bitLt`` subclass ``nn.Linear``, so QLoRA is covered.
    """
    names = set()
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear):
            leaf = name.rsplit('.', 1)[-1]
            if leaf not in exclude:
                names.add(leaf)
    return sorted(names)


def apply_lora(module: nn.Module, lora_cfg: Any, exclude: tuple[str, ...] = ('lm_head', 'output')):
    """Wrap ``module`` with PEFT LoRA; ``target_modules=None`` means every Linear layer."""
    from peft import get_peft_model

    lora_config = build(lora_cfg)
    if lora_config.target_modules is None:
        lora_config.target_modules = find_linear_names(module, exclude)
    return get_peft_model(module, lora_config)


def is_quantized(model: nn.Module) -> bool:
    """Whether the model was loaded with bitsandbytes (4- or 8-bit) quantisation."""
    return bool(getattr(model, 'is_loaded_in_4bit', False) or getattr(model, 'is_loaded_in_8bit', False))


class LLaVAModel(BaseModel):
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

        if freeze_llm:
            self.llm.requires_grad_(False)
        if freeze_visual_encoder:
            self.visual_encoder.requires_grad_(False)

        gc_kwargs = {'use_reentrant': False}  # non-reentrant: works when no input requires grad
        if is_quantized(self.llm):
            from peft import prepare_model_for_kbit_training

            self.llm = prepare_model_for_kbit_training(
                self.llm, use_gradient_checkpointing=use_activation_checkpointing,
                gradient_checkpointing_kwargs=gc_kwargs)
        elif use_activation_checkpointing:
            self.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        if use_activation_checkpointing and not freeze_visual_encoder:
            self.visual_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)

        self.use_llm_lora = llm_lora is not None
        self.use_visual_encoder_lora = visual_encoder_lora is not None
        if self.use_llm_lora:
            self.llm = apply_lora(self.llm, llm_lora)
        if self.use_visual_encoder_lora:
            self.visual_encoder = apply_lora(self.visual_encoder, visual_encoder_lora)
        if pretrained_pth is not None:
            self.load_pretrained(pretrained_pth)

    # ------------------------------------------------------------------ weights
    def load_pretrained(self, path: str) -> None:
        """Load a projector (and any of our trained weights) from ``path``; any format in
        ``mmllava.formats.llava``. Unknown keys are an error, never silently ignored."""
        from mmllava.formats.checkpoint import load_state_dict_file
        from mmllava.formats.llava import split_projector_state

        state = load_state_dict_file(path)
        projector, rest, _ = split_projector_state(state)
        own = self.state_dict_all_names()
        unexpected = sorted(k for k in rest if k not in own)
        missing = sorted(k for k in self.projector_keys() if k not in projector)
        if unexpected or (missing and len(missing) != len(self.projector_keys())) or not (projector or rest):
            raise MMLLaVAError(
                f'pretrained_pth {path}: does not match this model; '
                f'missing keys: {missing[:8] or "none"}; unexpected keys: {unexpected[:8] or "none"}'
                f'{" ..." if len(unexpected) > 8 else ""}')
        shapes = self.projector.state_dict()
        for key, value in projector.items():
            if tuple(value.shape) != tuple(shapes[key.removeprefix('projector.')].shape):
                raise MMLLaVAError(f'pretrained_pth {path}: {key} has shape {tuple(value.shape)}, the model '
                                   f'expects {tuple(shapes[key.removeprefix("projector.")].shape)} '
                                   '(was it trained for another LLM or vision encoder?)')
        nn.Module.load_state_dict(self, {**projector, **rest}, strict=False)

    def projector_keys(self) -> list[str]:
        """State-dict keys of the projector, in our naming."""
        return ['projector.' + k for k in self.projector.state_dict()]

    def state_dict_all_names(self) -> set[str]:
        """Every key of the full (unfiltered) state dict."""
        return set(nn.Module.state_dict(self).keys())

    def trainable_keys(self) -> set[str]:
        """Names of the parameters that train (projector, LoRA adapters, unfrozen towers)."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def state_dict(self, *args, **kwargs):
        """Only what was trained: the checkpoint of a LoRA run is megabytes, not the whole LLM."""
        trainable = self.trainable_keys()
        full = nn.Module.state_dict(self, *args, **kwargs)
        prefix = kwargs.get('prefix', '')
        return type(full)((k, v) for k, v in full.items() if k[len(prefix):] in trainable)

    # ------------------------------------------------------------------ embedding
    @property
    def _backbone(self) -> nn.Module:
        """The LLM without its head (``LlamaModel``/``Qwen2Model``), through any PEFT wrapper."""
        llm = self.llm.get_base_model() if hasattr(self.llm, 'get_base_model') else self.llm
        return llm.model

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels [N, 3, H, W] -> projected features [N, patches, llm_hidden] (CLS dropped)."""
        vision_dtype = next(self.visual_encoder.parameters()).dtype
        out = self.visual_encoder(pixel_values.to(vision_dtype), output_hidden_states=True)
        features = out.hidden_states[self.visual_select_layer][:, 1:]
        return self.projector(features.to(self.projector[0].weight.dtype))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the image positions (``IMAGE_TOKEN_INDEX``) replaced by image features."""
        embed_tokens = self.llm.get_input_embeddings()
        image_mask = input_ids == IMAGE_TOKEN_INDEX
        embeds = embed_tokens(input_ids.masked_fill(image_mask, 0))
        n_positions = int(image_mask.sum())
        if pixel_values is None:
            if n_positions:
                raise MMLLaVAError(f'batch has {n_positions} image positions but no pixel_values')
            return embeds
        features = self.encode_images(pixel_values)
        if features.shape[0] * features.shape[1] != n_positions:
            raise MMLLaVAError(
                f'image positions ({n_positions}) do not match image features '
                f'({features.shape[0]} images x {features.shape[1]} tokens)')
        return embeds.masked_scatter(image_mask.unsqueeze(-1), features.to(embeds.dtype))

    # ------------------------------------------------------------------ training
    def forward(self, data: dict, data_samples=None, mode: str = 'loss'):
        """mmengine entry point: ``mode='loss'`` -> ``{'loss': ...}``; ``'tensor'`` -> logits."""
        input_ids = data['input_ids']
        pixel_values = data.get('pixel_values')
        embeds = self.embed(input_ids, pixel_values)
        hidden = self._backbone(inputs_embeds=embeds, attention_mask=data.get('attention_mask'),
                                position_ids=data.get('position_ids'), use_cache=False).last_hidden_state
        if mode == 'tensor':
            return self.llm.get_output_embeddings()(hidden)
        if mode != 'loss':
            raise NotImplementedError(f'LLaVAModel.forward: unsupported mode {mode!r}')
        loss = self.labelled_loss(hidden, data['labels'])
        if pixel_values is None and self.training:
            loss = loss + self._unused_branch_zero()
        return {'loss': loss}

    def labelled_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy, computing the LM head only at labelled positions.

        Equal to ``CrossEntropy(lm_head(hidden)[:, :-1], labels[:, 1:])`` with ignore_index, but
        image and prompt positions (most of a LLaVA sequence) never get logits.
        """
        shift_labels = labels[:, 1:]
        selected = shift_labels != IGNORE_INDEX
        h = hidden[:, :-1][selected]
        y = shift_labels[selected]
        count = y.numel()
        lm_head = self.llm.get_output_embeddings()
        if count == 0:
            # Keeps the graph connected (distributed ranks must all reduce the same grads).
            return hidden.sum() * 0.0

        def chunk_loss(h_chunk, y_chunk):
            return F.cross_entropy(lm_head(h_chunk).float(), y_chunk, reduction='sum')

        if count <= self.loss_chunk_size or not torch.is_grad_enabled():
            total = chunk_loss(h, y)
        else:
            total = sum(checkpoint(chunk_loss, h[i:i + self.loss_chunk_size], y[i:i + self.loss_chunk_size],
                                   use_reentrant=False)
                        for i in range(0, count, self.loss_chunk_size))
        return total / count

    def _unused_branch_zero(self) -> torch.Tensor:
        """0 x (projector / trained vision output) for text-only batches.

        Every rank must produce gradients for the same parameters, or DDP/ZeRO wait forever when
        one rank draws a text-only batch (a known multi-GPU hang).
        """
        weight = self.projector[0].weight
        zero = self.projector(weight.new_zeros(1, 1, weight.shape[1])).sum() * 0.0
        if any(p.requires_grad for p in self.visual_encoder.parameters()):
            size = self.visual_encoder.config.image_size
            dummy = weight.new_zeros(1, 3, size, size)
            zero = zero + self.encode_images(dummy).sum() * 0.0
        return zero

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **generate_kwargs) -> torch.Tensor:
        """Generate from a prompt with image positions; returns only the new token ids [B, T]."""
        embeds = self.embed(input_ids, pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)

    def num_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts (4-bit weights counted as stored elements x 2)."""
        trainable = total = 0
        for p in self.parameters():
            n = p.numel() * (2 if p.dtype == torch.uint8 else 1)
            total += n
            trainable += n if p.requires_grad else 0
        return trainable, total
