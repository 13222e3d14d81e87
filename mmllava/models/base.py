"""What every multimodal model of the package shares: the mmengine entry point, the training loss
(logits only where a label is), generation from spliced embeddings, and a state dict that holds
only what was trained.

A subclass owns its parts and how pixels become features: it sets ``self.llm`` (a causal LM,
maybe PEFT-wrapped) and ``self.loss_chunk_size``, and implements ``encode_images(pixel_values)``
(``[N, tokens, llm_hidden]`` features, spliced in order at the ``IMAGE_TOKEN_INDEX`` positions)
and ``_unused_branch_zero()``.
"""
from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmllava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mmllava.errors import MMLLaVAError
from mmllava.models.lora import GRADIENT_CHECKPOINTING_KWARGS, apply_lora, keep_4bit_training_layout, prepare_llm


class MultimodalModel(BaseModel):
    """Base of ``LLaVAModel`` and ``InternVLModel`` (see the module docstring for the contract)."""

    llm: nn.Module
    loss_chunk_size: int

    @abstractmethod
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Pixels -> projected features ``[N, tokens, llm_hidden]``."""

    @abstractmethod
    def _unused_branch_zero(self) -> torch.Tensor:
        """0 x (the image branch's trained parameters), added to the loss of text-only batches.

        Every rank must produce gradients for the same parameters, or DDP/ZeRO wait forever when
        one rank draws a text-only batch (a known multi-GPU hang).
        """

    # ------------------------------------------------------------------ weights
    def _setup_training(self, vision: nn.Module, freeze_llm: bool, freeze_visual_encoder: bool,
                        use_activation_checkpointing: bool, llm_lora, visual_encoder_lora) -> nn.Module:
        """Freeze, quantisation prep, gradient checkpointing and LoRA for ``self.llm`` and ``vision``;
        returns ``vision`` (wrapped by PEFT when it gets LoRA) for the subclass to store."""
        if freeze_llm:
            self.llm.requires_grad_(False)
        if freeze_visual_encoder:
            vision.requires_grad_(False)
        self.llm = prepare_llm(self.llm, use_activation_checkpointing)
        if use_activation_checkpointing and not freeze_visual_encoder:
            vision.gradient_checkpointing_enable(gradient_checkpointing_kwargs=GRADIENT_CHECKPOINTING_KWARGS)
        self.use_llm_lora = llm_lora is not None
        self.use_visual_encoder_lora = visual_encoder_lora is not None
        if self.use_llm_lora:
            self.llm = apply_lora(self.llm, llm_lora)
        vision = apply_lora(vision, visual_encoder_lora) if self.use_visual_encoder_lora else vision
        # An eval-mode forward (the chat hook before training) must not repack 4-bit weights into
        # bitsandbytes' inference-only CPU layout (see keep_4bit_training_layout).
        keep_4bit_training_layout(self.llm, vision)
        return vision

    def train(self, mode: bool = True):
        """``nn.Module.train``, then every 4-bit weight back in its training layout: whatever packed
        one for CPU inference while the model evaluated (a hook, or code that switched bitsandbytes'
        flag on again), no training step computes through it."""
        super().train(mode)
        if mode:
            keep_4bit_training_layout(self)
        return self

    def init_weights(self) -> None:
        """Nothing to initialise: towers come from checkpoints, projectors from ``nn.Linear``.

        mmengine's default walks every parameter to log its statistics, which fails on
        bitsandbytes' uint8 NF4 storage (``mean(): could not infer output dtype ... Byte``).
        """

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

    def num_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts (4-bit weights counted as stored elements x 2)."""
        trainable = total = 0
        for p in self.parameters():
            n = p.numel() * (2 if p.dtype == torch.uint8 else 1)
            total += n
            trainable += n if p.requires_grad else 0
        return trainable, total

    # ------------------------------------------------------------------ training
    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the image positions (``IMAGE_TOKEN_INDEX``) replaced by image features."""
        embed_tokens = self.llm.get_input_embeddings()
        image_mask = input_ids == IMAGE_TOKEN_INDEX
        embeds = embed_tokens(input_ids.masked_fill(image_mask, 0))
        if pixel_values is None:
            _check_image_positions(image_mask, 0, 'no pixel_values')
            return embeds
        features = self.encode_images(pixel_values)
        _check_image_positions(image_mask, features.shape[0] * features.shape[1],
                               f'{features.shape[0]} images x {features.shape[1]} tokens')
        return embeds.masked_scatter(image_mask.unsqueeze(-1), features.to(embeds.dtype))

    @property
    def _backbone(self) -> nn.Module:
        """The LLM without its head (``LlamaModel``/``Qwen2Model``), through any PEFT wrapper."""
        llm = self.llm.get_base_model() if hasattr(self.llm, 'get_base_model') else self.llm
        return llm.model

    def forward(self, data: dict, data_samples=None, mode: str = 'loss'):
        """mmengine entry point: ``mode='loss'`` -> ``{'loss': ...}``; ``'tensor'`` -> logits.

        ``data['position_ids']`` marks packed rows (``mmllava.data.packing``): positions restart
        at 0 at every sample, and the 2D ``attention_mask`` is left out because only without one
        does transformers build the per-sample causal mask (SDPA, eager) or flash-attention-2's
        varlen segments from the position ids.
        """
        pixel_values = data.get('pixel_values')
        position_ids = data.get('position_ids')
        attention_mask = data.get('attention_mask') if position_ids is None else None
        embeds = self.embed(data['input_ids'], pixel_values)
        hidden = self._backbone(inputs_embeds=embeds, attention_mask=attention_mask,
                                position_ids=position_ids, use_cache=False).last_hidden_state
        if mode == 'tensor':
            return self.llm.get_output_embeddings()(hidden)
        if mode != 'loss':
            raise ValueError(f"{type(self).__name__}.forward: mode must be 'loss' or 'tensor', got {mode!r}")
        loss = self.labelled_loss(hidden, data['labels'])
        if pixel_values is None and self.training:
            loss = loss + self._unused_branch_zero()
        return {'loss': loss}

    def labelled_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy, computing the LM head only at labelled positions.

        Equal to ``CrossEntropy(lm_head(hidden)[:, :-1], labels[:, 1:])`` with ignore_index, but
        image and prompt positions (most of a multimodal sequence) never get logits.
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

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **generate_kwargs) -> torch.Tensor:
        """Generate from a prompt with image positions; returns only the new token ids [B, T]."""
        embeds = self.embed(input_ids, pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)


def _check_image_positions(image_mask: torch.Tensor, n_features: int, features: str) -> None:
    """Raise when the batch's image positions are not ``n_features``.

    Counting reads the mask on the host: free for CPU tensors, a stall of the step on an
    accelerator. There the check is queued on the device instead (it fails at a later kernel
    launch); the dataset already checks every sample's image positions when it is built.
    """
    if image_mask.device.type == 'cpu':
        n_positions = int(image_mask.sum())
        if n_positions != n_features:
            raise MMLLaVAError(f'image positions ({n_positions}) do not match image features ({features})')
    else:
        torch._assert_async(image_mask.sum() == n_features,
                            f'image positions do not match image features ({features})')
