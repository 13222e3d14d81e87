"""Parameters, gradients and optimizer state of a ``ModelSpec``, by part and storage type.

The rules are those of the code that builds the model (each line says where):

- a 4-bit LLM (bitsandbytes ``load_in_4bit``) stores every ``nn.Linear`` weight but the LM head as
  NF4/FP4: 0.5 byte a weight, plus one absmax per 64-weight block: fp32, or with double quant one
  byte a block plus an fp32 absmax per 256 blocks and the 256-entry fp32 code; PEFT's
  ``prepare_model_for_kbit_training`` then casts every other fp16/bf16 parameter (embeddings,
  norms, LM head, biases) to fp32 and freezes the whole LLM;
- LoRA adds ``r x (in + out)`` weights to every targeted Linear, in fp32 (PEFT's
  ``autocast_adapter_dtype`` upcasts bf16/fp16 adapters);
- LLaVA's projector is in the LLM's dtype, fp32 beside a 4-bit LLM (``LLaVAModel.__init__``);
  InternVL's ``mlp1`` in the checkpoint's dtype;
- AdamW keeps ``exp_avg`` and ``exp_avg_sq`` in each trained parameter's dtype plus a 4-byte step;
- DeepSpeed with bf16 casts the module to bf16 and keeps fp32 master weights and fp32 Adam moments
  (12 bytes a trained parameter) and bf16 gradients, partitioned over the GPUs from ZeRO stage 1
  (optimizer), 2 (+ gradients) and 3 (+ parameters); ``*_offload`` moves the 12 bytes to the CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mmllava.plan.spec import LoraSpec, ModelSpec

NF4_BLOCK = 64
NESTED_BLOCK = 256


def nf4_bytes(numel: int, double_quant: bool) -> int:
    """Storage of one 4-bit weight: packed values + absmax (+ the nested state with double quant)
    + the 16-entry fp32 NF4 code table."""
    blocks = math.ceil(numel / NF4_BLOCK)
    packed = math.ceil(numel / 2)
    if double_quant:
        # uint8 absmax per block; fp32 absmax per 256 blocks, the 256-entry fp32 code and its offset
        absmax = blocks + math.ceil(blocks / NESTED_BLOCK) * 4 + 256 * 4 + 4
    else:
        absmax = blocks * 4
    return packed + absmax + 16 * 4


@dataclass
class PartRow:
    """One line of the parameter table: a part's tensors of one storage type."""

    part: str
    storage: str  # 'bf16', 'fp32', 'nf4+dq', ...
    count: int
    bytes: int
    trainable: int  # parameters that train
    trained_bytes_each: int  # bytes a trained parameter has (its dtype)


def _dtype_name(dtype) -> str:
    return {torch.float32: 'fp32', torch.bfloat16: 'bf16', torch.float16: 'fp16', torch.int64: 'int64'}.get(
        dtype, str(dtype).removeprefix('torch.'))


class _Rows:
    def __init__(self):
        self.rows: dict[tuple[str, str], PartRow] = {}

    def add(self, part: str, storage: str, count: int, nbytes: int, trainable: bool, each: int) -> None:
        row = self.rows.setdefault((part, storage), PartRow(part, storage, 0, 0, 0, each))
        row.count += count
        row.bytes += nbytes
        row.trainable += count if trainable else 0


def reaches_loss(name: str, layers_used: int | None) -> bool:
    """Whether a vision parameter gets a gradient: not in a layer past the selected one (LLaVA's
    layer -2 leaves the last layer and the post-LayerNorm unused), so AdamW keeps no state for it."""
    if layers_used is None:
        return True
    if 'post_layernorm' in name:
        return False
    parts = name.split('.')
    for key, index in zip(parts, parts[1:]):
        if key in ('layers', 'layer') and index.isdigit():
            return int(index) < layers_used
    return True


def _lora_rows(rows: _Rows, part: str, module: nn.Module, lora: LoraSpec, exclude: tuple[nn.Module, ...],
               layers_used: int | None = None) -> None:
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Linear) and sub not in exclude and name.rsplit('.', 1)[-1] not in ('lm_head', 'output') \
                and lora.targets_leaf(name.rsplit('.', 1)[-1]):
            count = lora.r * (sub.in_features + sub.out_features)
            rows.add(f'{part} LoRA', 'fp32', count, count * 4, reaches_loss(name, layers_used), 4)


def _plain_rows(rows: _Rows, part: str, module: nn.Module, dtype, trainable: bool,
                layers_used: int | None = None) -> None:
    size = torch.tensor([], dtype=dtype).element_size()
    for name, param in module.named_parameters():
        rows.add(part, _dtype_name(dtype), param.numel(), param.numel() * size,
                 trainable and reaches_loss(name, layers_used), size)
    for buffer in module.buffers():
        rows.add(part, _dtype_name(buffer.dtype), buffer.numel(), buffer.numel() * buffer.element_size(), False, 0)


def parameter_rows(spec: ModelSpec) -> list[PartRow]:
    """Parameters by part (LLM, vision, projector, LoRA) and storage type."""
    rows = _Rows()
    head = spec.llm.get_output_embeddings()
    if spec.quant:
        storage = 'nf4+dq' if spec.quant['double_quant'] else 'nf4'
        quantized = {id(m) for m in spec.llm.modules() if isinstance(m, nn.Linear) and m is not head}
        for module in spec.llm.modules():
            for name, param in module.named_parameters(recurse=False):
                if id(module) in quantized and name == 'weight':
                    rows.add('LLM', storage, param.numel(), nf4_bytes(param.numel(), spec.quant['double_quant']),
                             False, 0)
                else:  # prepare_model_for_kbit_training: fp32, frozen
                    rows.add('LLM', 'fp32', param.numel(), param.numel() * 4, False, 4)
        for buffer in spec.llm.buffers():
            rows.add('LLM', _dtype_name(buffer.dtype), buffer.numel(), buffer.numel() * buffer.element_size(), False, 0)
    else:
        _plain_rows(rows, 'LLM', spec.llm, spec.llm_dtype, not spec.freeze_llm)
    _plain_rows(rows, 'vision', spec.vision, spec.vision_dtype, not spec.freeze_vision, spec.vision_layers_used)
    _plain_rows(rows, 'projector', spec.projector, spec.projector_dtype, True)
    if spec.llm_lora:
        _lora_rows(rows, 'LLM', spec.llm, spec.llm_lora, (head,))
    if spec.vision_lora:
        _lora_rows(rows, 'vision', spec.vision, spec.vision_lora, (), spec.vision_layers_used)
    return list(rows.rows.values())


def trained_tensors(spec: ModelSpec) -> int:
    """How many trained parameter tensors there are (AdamW keeps a step counter for each)."""
    n = sum(1 for _ in spec.projector.parameters())
    n += 0 if spec.freeze_llm or spec.quant else sum(1 for _ in spec.llm.parameters())
    n += 0 if spec.freeze_vision else sum(1 for name, _ in spec.vision.named_parameters()
                                          if reaches_loss(name, spec.vision_layers_used))
    for lora, module, used in ((spec.llm_lora, spec.llm, None),
                               (spec.vision_lora, spec.vision, spec.vision_layers_used)):
        if lora:
            n += 2 * sum(1 for name, m in module.named_modules() if isinstance(m, nn.Linear)
                         and m is not spec.llm.get_output_embeddings() and lora.targets_leaf(name.rsplit('.', 1)[-1])
                         and reaches_loss(name, used))
    return n


@dataclass
class StateBytes:
    """Per-GPU bytes of the training state."""

    parameters: int
    gradients: int
    optimizer: int  # Adam moments (+ fp32 master weights under DeepSpeed)
    offloaded: int = 0  # optimizer bytes moved to the CPU

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer


def state_bytes(rows: list[PartRow], steps: int, zero_stage: int | None = None, num_gpus: int = 1,
                offload: bool = False) -> StateBytes:
    """Parameters, gradients and optimizer state per GPU: plain training (``zero_stage=None``: each
    parameter and gradient in its dtype, AdamW moments alike, ``steps`` 4-byte step counters) or
    DeepSpeed bf16 ZeRO ``zero_stage`` over ``num_gpus`` GPUs."""
    params = sum(r.bytes for r in rows)
    trained = sum(r.trainable for r in rows)
    if zero_stage is None:
        grads = sum(r.trainable * r.trained_bytes_each for r in rows)
        return StateBytes(params, grads, 2 * grads + 4 * steps)
    # DeepSpeed bf16: every floating parameter is cast to bf16 (NF4 storage stays as it is).
    floating = sum(r.count for r in rows if r.storage in ('fp32', 'bf16', 'fp16'))
    params = params - sum(r.bytes for r in rows if r.storage in ('fp32', 'bf16', 'fp16')) + 2 * floating
    n = max(num_gpus, 1)
    optimizer = 12 * trained / (n if zero_stage >= 1 else 1)
    grads = 2 * trained / (n if zero_stage >= 2 else 1)
    if zero_stage >= 3:
        params = params - 2 * floating + 2 * floating / n
    return StateBytes(int(params), int(grads), 0 if offload else int(optimizer), int(optimizer) if offload else 0)
