"""The plan as printed by ``mmllava plan`` and as JSON."""
from __future__ import annotations

from mmllava.plan.planner import GiB, Plan, recommend
from mmllava.plan.sequence_lengths import percentile


def _gib(n: float) -> str:
    return f'{n / GiB:.2f} GiB' if n >= GiB / 100 else f'{n / 2 ** 20:.1f} MiB'


def plan_lines(plan: Plan, gpu_mem: int | None = None) -> list[str]:
    """The report: data, parameters, state per GPU, activations, peak, recommendation."""
    out = [f'model: {src}' for src in plan.spec.sources]
    profile = plan.profile
    if profile.read:
        lengths = profile.untruncated
        out.append(f'data: {profile.samples} samples; positions (image positions counted) p50 '
                   f'{percentile(lengths, 0.5)}, p95 {percentile(lengths, 0.95)}, max {max(lengths)}; '
                   f'{profile.cut} cut by max_length={profile.max_length}')
        if profile.packed:
            out.append(f'packed: {len(profile.lengths)} rows of up to {profile.max_length} positions, '
                       f'p95 fill {percentile(profile.lengths, 0.95)}')
    else:
        out.append(f'data: not read ({profile.note}); planned at max_length={profile.max_length}, '
                   f'{plan.workload.images} image{" tiles" if plan.spec.family == "internvl" else ""} a sample, '
                   'every text position labelled')
    out.append('parameters:')
    for row in plan.rows:
        trained = f', {row.trainable:,} trained' if row.trainable else ''
        out.append(f'  {row.part:<14} {row.storage:<7} {row.count:>15,} {_gib(row.bytes):>11}{trained}')
    zero = 'no DeepSpeed' if plan.zero_stage is None else (
        f'DeepSpeed ZeRO-{plan.zero_stage}{" offload" if plan.offload else ""} (bf16) on {plan.num_gpus} GPU(s)')
    s = plan.state
    out.append(f'per GPU, {zero}: parameters {_gib(s.parameters)}, gradients {_gib(s.gradients)}, '
               f'optimizer states{" + fp32 masters" if plan.zero_stage is not None else ""} {_gib(s.optimizer)}'
               + (f' ({_gib(s.offloaded)} on the CPU)' if s.offloaded else ''))
    w = plan.workload
    ckpt = 'on' if plan.spec.checkpointing else 'off'
    out.append(f'activations per {"pack row" if w.packed else "sample"} at p95 ({w.row_length} positions, '
               f'{w.labelled} labelled, {w.images} image{" tile" if plan.spec.family == "internvl" else ""}'
               f'{"s" if w.images != 1 else ""}): '
               f'{_gib(plan.activations_no_ckpt.held)} without checkpointing, '
               f'{_gib(plan.activations_ckpt.held)} with it (config: {ckpt})')
    out.append(f'micro-batch: {w.rows} x {w.row_length} positions: activations {_gib(plan.activations.held)} '
               f'+ {_gib(plan.activations.transient)} transient in backward')
    out.append(f'predicted peak per GPU: {_gib(plan.peak)}')
    if gpu_mem:
        out += recommend(plan, gpu_mem)
    return out


def plan_json(plan: Plan) -> dict:
    """The plan's numbers (bytes) for ``--json``."""
    return {
        'sources': plan.spec.sources,
        'data_read': plan.profile.read,
        'parameters': [vars(row) for row in plan.rows],
        'state': vars(plan.state),
        'zero_stage': plan.zero_stage, 'num_gpus': plan.num_gpus,
        'workload': vars(plan.workload),
        'activations_per_sample': {'no_checkpointing': plan.activations_no_ckpt.held,
                                   'checkpointing': plan.activations_ckpt.held,
                                   'checkpointing_transient': plan.activations_ckpt.transient},
        'activations': vars(plan.activations),
        'peak': plan.peak,
    }
