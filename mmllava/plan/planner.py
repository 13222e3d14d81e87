"""``mmllava plan``: predicted peak memory per GPU for a config, and the batch that fits a GPU.

peak = parameters + gradients + optimizer state (``mmllava.plan.parameters``, per ZeRO stage)
     + activations of one micro-batch at the p95 sample (``mmllava.plan.activations``)
     + the transient of backward (one recomputed layer, the loss chunk's logits).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass

import torch

from mmllava.data.packing import PackedDataset
from mmllava.errors import MMLLaVAError
from mmllava.plan.activations import Activations, activation_bytes, precision
from mmllava.plan.parameters import PartRow, StateBytes, parameter_rows, state_bytes, trained_tensors
from mmllava.plan.sequence_lengths import DataProfile, read_profile
from mmllava.plan.spec import LoraSpec, ModelSpec, read_model_spec

HEADROOM = 0.9  # plan to 90% of the GPU: the allocator's fragmentation and the CUDA context need the rest
GiB = 2 ** 30


@dataclass
class Workload:
    """One micro-batch as planned: rows of ``row_length`` positions."""

    rows: int
    row_length: int
    labelled: int  # per row
    images: int  # per row (tiles for InternVL)
    packed: bool


@dataclass
class Plan:
    """Everything ``mmllava plan`` prints: the model, the data, the state per GPU, the activations of
    the configured micro-batch and of one row with and without checkpointing."""

    spec: ModelSpec
    profile: DataProfile
    rows: list[PartRow]
    state: StateBytes
    workload: Workload
    activations: Activations
    activations_no_ckpt: Activations
    activations_ckpt: Activations
    zero_stage: int | None
    num_gpus: int
    offload: bool
    accumulative_counts: int
    device: str

    @property
    def peak(self) -> int:
        """Predicted peak bytes per GPU."""
        return self.state.total + self.activations.held + self.activations.transient


def _zero(deepspeed: str | None) -> tuple[int | None, bool]:
    """(ZeRO stage, optimizer offloaded) of a ``--deepspeed`` value: a shipped name or a JSON file."""
    if not deepspeed:
        return None, False
    name = str(deepspeed).removeprefix('deepspeed_')
    if name.endswith('.json'):
        try:
            with open(name, encoding='utf-8') as f:
                zero = json.load(f).get('zero_optimization') or {}
        except (OSError, ValueError) as e:
            raise MMLLaVAError(f'--deepspeed {deepspeed}: {e}') from None
        return int(zero.get('stage', 0)), bool(zero.get('offload_optimizer'))
    stage = name.removeprefix('zero').split('_')[0]
    if not stage.isdigit() or int(stage) > 3:
        raise MMLLaVAError(f'--deepspeed {deepspeed}: expected zero1|zero2|zero3|zero2_offload|zero3_offload '
                           'or a JSON file')
    return int(stage), name.endswith('_offload')


def workload(spec: ModelSpec, profile: DataProfile, rows: int, q: float = 0.95, max_tiles: int = 1) -> Workload:
    """``rows`` rows like the data's ``q`` sample (pack, with packing) by length, or at ``max_length``
    when the data is unknown."""
    if profile.read:
        length, labelled, images = profile.at(q)
        return Workload(rows, length, labelled, images, profile.packed)
    # Unknown data: one image (InternVL: all its tiles and the thumbnail), every other position
    # labelled: the conservative end.
    images = max_tiles if spec.family == 'internvl' else 1
    length = profile.max_length
    return Workload(rows, length, length - images * spec.image_tokens_per_tile, images, profile.packed)


def make_plan(cfg, num_gpus: int = 1, deepspeed: str | None = None, device: str = 'cuda',
              batch_size: int | None = None, spec: ModelSpec | None = None,
              profile: DataProfile | None = None) -> Plan:
    """The plan of ``cfg`` (see the module docstring) on ``num_gpus`` GPUs (``device='cpu'``: as a CPU
    run trains, fp32 without autocast, for checking against ``mmllava.plan.measured_memory``)."""
    spec = spec or read_model_spec(cfg)
    profile = profile or read_profile(cfg, spec.image_tokens_per_tile)
    zero_stage, offload = _zero(deepspeed)
    rows = parameter_rows(spec)
    state = state_bytes(rows, trained_tensors(spec), zero_stage, num_gpus, offload)
    loader = cfg.get('train_dataloader') or {}
    batch = batch_size or int(loader.get('batch_size', 1))
    dynamic = int(cfg.get('max_dynamic_patch') or 1)
    work = workload(spec, profile, batch, max_tiles=dynamic + 1 if dynamic > 1 else 1)
    p = precision(spec, device, bool(deepspeed))

    def acts(ckpt=None, w=work):
        return activation_bytes(spec, p, w.rows, w.row_length, w.rows * w.labelled, w.rows * w.images,
                                checkpointing=ckpt, padded=not w.packed)

    one = dataclasses.replace(work, rows=1)
    accumulate = int((cfg.get('optim_wrapper') or {}).get('accumulative_counts', 1) or 1)
    return Plan(spec, profile, rows, state, work, acts(), acts(False, one), acts(True, one),
                zero_stage, num_gpus, offload, accumulate, device)


def peak_for(plan: Plan, rows: int, **spec_changes) -> int:
    """The plan's peak with ``rows`` rows per micro-batch (and ``spec`` fields changed)."""
    spec = dataclasses.replace(plan.spec, **spec_changes) if spec_changes else plan.spec
    p = precision(spec, plan.device, plan.zero_stage is not None)
    w = dataclasses.replace(plan.workload, rows=rows)
    a = activation_bytes(spec, p, rows, w.row_length, rows * w.labelled, rows * w.images, padded=not w.packed)
    state = plan.state
    if spec_changes:
        state = state_bytes(parameter_rows(spec), trained_tensors(spec), plan.zero_stage, plan.num_gpus, plan.offload)
    return state.total + a.held + a.transient


def recommend(plan: Plan, gpu_mem: int) -> list[str]:
    """The largest micro-batch (rows) and the accumulation that keep the effective batch, within
    ``HEADROOM`` of ``gpu_mem``; else the switch that saves the most."""
    budget = gpu_mem * HEADROOM
    effective = plan.workload.rows * plan.accumulative_counts
    unit = 'pack rows' if plan.workload.packed else 'samples'
    best = 0
    rows = 1
    while rows <= 4096 and peak_for(plan, rows) <= budget:
        best, rows = rows, rows * 2
    if best:
        low, high = best, best * 2  # bisect between the last power of two that fits and the next
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if peak_for(plan, mid) <= budget else (low, mid)
        best = low
        batch = min(best, effective)
        accumulate = max(1, math.ceil(effective / batch))
        return [f'fits {gpu_mem / GiB:.0f} GiB with 10% headroom: up to batch_size={best} {unit} per GPU '
                f'(peak {peak_for(plan, best) / GiB:.2f} GiB); for the config\'s effective batch of {effective} '
                f'(batch_size={plan.workload.rows} x accumulative_counts={plan.accumulative_counts}): '
                f'batch_size={batch}, accumulative_counts={accumulate} (peak {peak_for(plan, batch) / GiB:.2f} GiB)']
    spec = plan.spec
    options = []
    if not spec.checkpointing:
        options.append(('use_activation_checkpointing=True', dict(checkpointing=True)))
    if not spec.quant:
        options.append(('QLoRA (4-bit NF4 LLM + LoRA)', dict(
            quant={'double_quant': True, 'compute_dtype': torch.bfloat16}, freeze_llm=True,
            llm_lora=spec.llm_lora or LoraSpec(64, 0.05, None))))
    if spec.llm_lora and spec.llm_lora.r > 64:
        options.append((f'LLM LoRA r=64 (config: r={spec.llm_lora.r})',
                        dict(llm_lora=dataclasses.replace(spec.llm_lora, r=64))))
    lines = [f'nothing fits {gpu_mem / GiB:.0f} GiB with 10% headroom: batch_size=1 needs '
             f'{peak_for(plan, 1) / GiB:.2f} GiB']
    results = [(name, peak_for(plan, 1, **changes)) for name, changes in options]
    if plan.num_gpus > 1 and plan.zero_stage != 3:
        zero3 = state_bytes(plan.rows, trained_tensors(spec), 3, plan.num_gpus, plan.offload)
        results.append((f'--deepspeed zero3 on {plan.num_gpus} GPUs',
                        peak_for(plan, 1) - plan.state.total + zero3.total))
    if not plan.offload:
        offload = state_bytes(plan.rows, trained_tensors(spec), 2, plan.num_gpus, True)
        dense = precision(spec, plan.device, True)
        w = plan.workload
        a = activation_bytes(spec, dense, 1, w.row_length, w.labelled, w.images, padded=not w.packed)
        results.append(('--deepspeed zero2_offload (bf16 weights, optimizer on the CPU)',
                        offload.total + a.held + a.transient))
    half = max(plan.workload.row_length // 2, 1)
    shorter = dataclasses.replace(plan, workload=dataclasses.replace(plan.workload, row_length=half,
                                                                     labelled=min(plan.workload.labelled, half)))
    results.append((f'max_length={half}', peak_for(shorter, 1)))
    for name, peak in sorted(results, key=lambda item: item[1]):
        lines.append(f'  {name}: batch_size=1 needs {peak / GiB:.2f} GiB'
                     + (' (fits)' if peak <= budget else ''))
    lines.append(f'saves most: {min(results, key=lambda item: item[1])[0]}')
    return lines


def predict_peak(cfg, num_gpus: int = 1, deepspeed: str | None = None, read_data: bool = True) -> int:
    """Predicted peak bytes per GPU of training ``cfg``; ``read_data=False`` plans at ``max_length``
    without tokenising the data (cheap, and the conservative end)."""
    profile = None if read_data else DataProfile(int(cfg.get('max_length') or 2048), note='not read',
                                                 packed=_packed(cfg))
    return make_plan(cfg, num_gpus=num_gpus, deepspeed=deepspeed, profile=profile).peak


def _packed(cfg) -> bool:
    dataset = (cfg.get('train_dataloader') or {}).get('dataset')
    return isinstance(dataset, dict) and dataset.get('type') is PackedDataset


def peak_line(cfg, deepspeed: str | None = None) -> str:
    """One line for the train header: the predicted peak per GPU at ``max_length`` (``mmllava plan
    CONFIG`` gives the details). Never raises: a config the plan cannot read must still train."""
    try:
        peak = predict_peak(cfg, num_gpus=int(os.environ.get('WORLD_SIZE', 1)), deepspeed=deepspeed, read_data=False)
    except Exception as e:  # noqa: BLE001 - the header must not stop a run
        return f'predicted peak memory per GPU: unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})'
    return (f'predicted peak memory per GPU: {peak / GiB:.2f} GiB at max_length={cfg.get("max_length")} '
            f'(details and the batch that fits: mmllava plan {os.path.basename(cfg.filename or "CONFIG")})')
