"""Activation memory: the bytes autograd holds for backward at the end of the forward pass.

Counted per token and layer from what each operator saves (read off ``grad_fn._saved_*`` on the
built models; ``mmllava.plan.measured_memory`` counts the same on a real step). ``b`` is the compute dtype's
bytes (2 under bf16 autocast or DeepSpeed bf16 on a GPU; the model's dtype on a CPU), ``m`` a dropout
mask's bytes (1 on CUDA: a bool; ``b`` on a CPU: a float mask), ``r`` the LoRA rank.

Llama-style decoder layer (hidden ``h``, intermediate ``i``, ``a`` heads, ``k`` KV heads, head dim
``d = h/a``), per token:

- each RMSNorm: its input in fp32, ``4h`` (it upcasts before the power), + ``4`` (the rsqrt);
  + ``b·h`` (its normalised output) when the norm weight trains (full fine-tune);
- each Linear input, once per group of Linears reading the same tensor (q/k/v; gate/up; o; down):
  ``b·n_in`` when the base weight trains; a frozen or 4-bit base weight saves nothing, because
  the input's gradient needs only the weight;
- each LoRA-targeted Linear: with dropout ``p > 0`` its own mask ``m·n_in`` and dropped input
  ``b·n_in`` (the input of ``lora_A``); with ``p = 0`` ``lora_A`` saves the shared input (counted
  once per group); + ``b·r`` (the input of ``lora_B``);
- attention, SDPA / flash-attention-2: q ``b·a·d``, k and v ``b·k·d`` each, the output ``b·a·d``
  (also ``o_proj``'s input), log-sum-exp ``4a``; eager attention instead keeps k and v repeated to
  ``a`` heads, the fp32 softmax and its ``b`` copy (none when ``b = 4``): ``(4 + b)·a·L`` a token
for a row of ``L``;
- the SwiGLU MLP: ``silu(gate)`` saves gate's output, the product saves both factors: ``3·b·i``.

Whole model: RoPE's cos and sin ``2·b·d`` a position of a row (of every row when packed: the
positions differ; shared by the layers), the final norm, the
image-position mask (1 byte), token ids (8) when the embeddings train, a mask ``B·L²`` when a
padded batch has more than one row or rows are packed (``b`` bytes an element in each layer's SDPA,
or once as bool under checkpointing), and the loss: it computes
the LM head only at the ``n`` labelled positions (``labelled_loss``), saving their hidden states
``b·h·n`` when the head trains or ``n > loss_chunk_size`` (then each chunk is checkpointed and only
the hidden states stay) and otherwise the fp32 log-softmax ``4·V·n``. Backward adds, transiently,
the logits' gradients ``(4 + b)·V·n`` (a chunk's recomputed logits and log-softmax too when chunked).

Activation checkpointing (non-reentrant) keeps only each decoder layer's input, ``res·h`` a token
(``res`` = the residual stream's bytes: 4 when QLoRA's fp32 embeddings feed it under autocast),
and recomputes one layer at a time in backward: that layer's activations are transient peak.

Vision tower: frozen without LoRA it saves nothing (nothing before it requires grad). With LoRA
or training, each of the layers up to the selected one (LLaVA uses layer -2: the last layer's
graph is freed unused) saves, per position (CLS included): two LayerNorm inputs ``b·vh`` + 8,
the Linear-group terms above, SDPA q, k, v, output ``4·b·vh``, the activation (quick GELU:
``2·b·vi``, x and its sigmoid; GELU: ``b·vi``). The projector trains: LLaVA's saves its input
``b·vh`` and twice ``b·h`` (GELU, second Linear) per image token; InternVL's ``mlp1`` its LayerNorm
input and output (``2·b·4vh`` + 8) and twice ``b·h``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmllava.plan.spec import LoraSpec, ModelSpec


@dataclass
class Precision:
    """Byte sizes during the step: ``b`` compute, ``m`` dropout mask, ``res`` residual stream."""

    b: int
    m: int
    res: int


def precision(spec: ModelSpec, device: str, deepspeed: bool) -> Precision:
    """The byte sizes a GPU (bf16 autocast, or DeepSpeed bf16) or a CPU run (no autocast) uses."""
    if device == 'cpu':
        b = torch.tensor([], dtype=spec.quant['compute_dtype'] if spec.quant else spec.llm_dtype).element_size()
        return Precision(b, b, 4 if spec.quant else b)
    # QLoRA's embeddings are fp32 after prepare_model_for_kbit_training; DeepSpeed casts them to bf16.
    return Precision(2, 1, 4 if spec.quant and not deepspeed else 2)


def _group(n_in: int, targets: list[str], base_trains: bool, lora: LoraSpec | None, p: Precision,
           input_shared: bool = False) -> int:
    """Per-token bytes the Linears ``targets`` reading one ``n_in``-wide input save (see module doc)."""
    total = 0
    lora_targets = [t for t in targets if lora and lora.targets_leaf(t)]
    input_saved = base_trains or (lora_targets and lora.dropout == 0)
    if input_saved and not input_shared:
        total += p.b * n_in
    for _ in lora_targets:
        total += lora.r * p.b + ((p.m + p.b) * n_in if lora.dropout > 0 else 0)
    return total


def decoder_layer_bytes(spec: ModelSpec, p: Precision, row: int) -> int:
    """Per-token bytes one LLM decoder layer saves (``row``: positions of a row, for eager attention)."""
    c = spec.llm.config
    h, i, a = c.hidden_size, c.intermediate_size, c.num_attention_heads
    k = c.num_key_value_heads or a
    d = getattr(c, 'head_dim', None) or h // a
    trains = not spec.freeze_llm and not spec.quant
    lora = spec.llm_lora
    norm = 4 * h + 4 + (p.b * h if trains else 0)
    total = 2 * norm
    total += _group(h, ['q_proj', 'k_proj', 'v_proj'], trains, lora, p)
    if spec.attn_implementation == 'eager':
        # q, k and v repeated to a heads, the fp32 softmax (and its copy in the compute dtype, if not fp32)
        total += p.b * 3 * a * d + (4 + (p.b if p.b != 4 else 0)) * a * row
        total += _group(a * d, ['o_proj'], trains, lora, p)
    else:
        total += p.b * (2 * a * d + 2 * k * d) + 4 * a
        total += _group(a * d, ['o_proj'], trains, lora, p, input_shared=True)
    total += _group(h, ['gate_proj', 'up_proj'], trains, lora, p)
    total += 3 * p.b * i
    total += _group(i, ['down_proj'], trains, lora, p)
    return total


def vision_layer_bytes(spec: ModelSpec, p: Precision) -> int:
    """Per-position bytes one vision layer saves when the tower gets gradients (else 0)."""
    if spec.freeze_vision and not spec.vision_lora:
        return 0
    c = spec.vision.config
    vh, vi = c.hidden_size, c.intermediate_size
    trains = not spec.freeze_vision
    lora = spec.vision_lora
    clip = spec.family == 'llava'
    names = (['q_proj', 'k_proj', 'v_proj'], ['out_proj' if clip else 'projection_layer'], ['fc1'], ['fc2'])
    total = 2 * (p.b * vh + 8)
    total += _group(vh, names[0], trains, lora, p)
    total += 4 * p.b * vh + 4 * c.num_attention_heads
    total += _group(vh, names[1], trains, lora, p, input_shared=True)
    total += _group(vh, names[2], trains, lora, p)
    quick = getattr(c, 'hidden_act', 'gelu') == 'quick_gelu'
    total += (2 if quick else 1) * p.b * vi
    total += _group(vi, names[3], trains, lora, p)
    if not clip and trains:  # InternViT's layer scales lambda_1/2 save their inputs when they train
        total += 2 * p.b * vh
    return total


@dataclass
class Activations:
    """Activation bytes of one micro-batch (see the module docstring)."""

    held: int  # at the end of the forward pass
    transient: int  # extra during backward: one recomputed layer (checkpointing), the loss chunk's logits


def activation_bytes(spec: ModelSpec, p: Precision, rows: int, row_length: int, labelled: int, images: int,
                     checkpointing: bool | None = None, padded: bool = True) -> Activations:
    """Activations of ``rows`` rows of ``row_length`` positions holding ``labelled`` labelled positions
    and ``images`` images (tiles) in all; ``checkpointing`` overrides the config's switch."""
    c = spec.llm.config
    ckpt = spec.checkpointing if checkpointing is None else checkpointing
    tokens = rows * row_length
    h = c.hidden_size
    d = getattr(c, 'head_dim', None) or h // c.num_attention_heads
    layer = decoder_layer_bytes(spec, p, row_length) * tokens
    layers = c.num_hidden_layers
    held = (layers * p.res * h * tokens) if ckpt else layers * layer
    trains = not spec.freeze_llm and not spec.quant
    held += 2 * p.b * d * row_length * (1 if padded else rows) + 4 * h * tokens + 4 * tokens + (p.b * h * tokens if trains else 0)
    held += tokens * (1 + (8 if trains else 0)) + tokens  # image-position mask, ids, labelled-position mask
    if rows > 1 or not padded:
        # the padding mask (or packed rows' per-sample causal mask): bool, held by the checkpointed
        # layers; without checkpointing each layer's SDPA saves it converted to the compute dtype
        held += rows * row_length ** 2 * (1 if ckpt else layers * p.b)
    if ckpt:
        held += 8 * row_length  # position ids, held by the checkpointed layers
    vocab = c.vocab_size
    chunked = labelled > spec.loss_chunk_size
    held += (p.b * h * labelled if trains or chunked else 0) + (0 if chunked else 4 * vocab * labelled)
    transient = layer if ckpt else 0
    # backward of the loss: the logits' gradient (fp32, then the compute dtype); a chunked loss first
    # recomputes its chunk's logits and log-softmax as well
    transient += ((4 + 4 + 4 + p.b) * vocab * spec.loss_chunk_size if chunked else (4 + p.b) * vocab * labelled)
    # image branch
    vision_layer = vision_layer_bytes(spec, p)
    positions = images * spec.tile_positions
    vc = spec.vision.config
    if vision_layer:
        vision_ckpt = ckpt and not spec.freeze_vision  # checkpointing is switched on for a trained tower only
        per_layer = vision_layer * positions
        held += spec.vision_layers_used * (p.b * vc.hidden_size * positions if vision_ckpt else per_layer)
        held += p.b * vc.hidden_size * positions  # the pre-LayerNorm / embedding output
        transient = max(transient, per_layer if vision_ckpt else 0)
    features = images * spec.image_tokens_per_tile
    if spec.family == 'llava':
        held += p.b * features * (vc.hidden_size + 2 * h)
    else:
        held += p.b * features * (2 * 4 * vc.hidden_size + 2 * h) + 8 * features
    return Activations(int(held), int(transient))
