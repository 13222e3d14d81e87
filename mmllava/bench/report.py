"""Interleaved repeats of the two loops, and their result as a JSON record and as a table."""
from __future__ import annotations

import copy
import gc
import os
import statistics

import torch

from mmllava.bench.runs import run_framework, run_reference
from mmllava.engine.machine import format_machine_facts, machine_facts

# (field, column title, format) in the order the table prints them
FIELDS = [
    ('sec_per_step', 's/step', '{:.4f}'),
    ('sec_per_step_min', 'fastest s/step', '{:.4f}'),
    ('cpu_sec_per_step', 'CPU s/step', '{:.4f}'),
    ('samples_per_sec', 'samples/s', '{:.1f}'),
    ('samples_per_step', 'samples/step', '{:.1f}'),
    ('real_tokens_per_sec', 'real tok/s', '{:.0f}'),
    ('real_tokens_per_step', 'real tok/step', '{:.0f}'),
    ('padding_fraction', 'padding', '{:.1%}'),
    ('data_wait_sec_per_step', 'data wait s/step', '{:.4f}'),
    ('data_wait_fraction', 'data wait', '{:.1%}'),
    ('cpu_rss_mb', 'peak RSS MB', '{:.0f}'),
    ('cuda_max_allocated_mb', 'CUDA max alloc MB', '{:.0f}'),
    ('flops_per_real_token', 'FLOP/real token', '{:.3g}'),
    ('tflops_per_sec', 'TFLOP/s', '{:.3g}'),
    ('hfu', 'FLOPs utilisation', '{:.1%}'),
]


def _median_fields(runs: list[dict]) -> dict:
    """Per measure, the median over repeats (``losses`` are the same in every repeat: the first's)."""
    return {key: runs[0][key] if key == 'losses' else statistics.median(run[key] for run in runs) for key in runs[0]}


def benchmark(cfg, steps: int, warmup: int, repeats: int = 1, reference: bool = True,
              deepspeed: str | None = None) -> dict:
    """Time ``cfg`` through the runner (and the bare loop), alternating ``repeats`` times; medians per field.

    ``overhead`` holds framework / bare-loop ratios of the median, the fastest and the CPU seconds
    per step, and the median of the per-repeat ratios (each pair ran back to back, so slow phases
    of a shared machine cancel in part). ``deepspeed`` (a ``--deepspeed`` value) runs both loops
    through a DeepSpeed engine.
    """
    runs = {'framework': [], 'reference': []}
    load_before = os.getloadavg()
    for _ in range(repeats):
        runs['framework'].append(run_framework(copy.deepcopy(cfg), steps, warmup, deepspeed))
        gc.collect()
        if reference:
            runs['reference'].append(run_reference(copy.deepcopy(cfg), steps, warmup, deepspeed))
            gc.collect()
    result = {
        'config': cfg.filename, 'steps': steps, 'warmup': warmup, 'repeats': repeats, 'deepspeed': deepspeed,
        'device': torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
        'torch_threads': torch.get_num_threads(), 'cpu_count': os.cpu_count(),
        'load_average_1min': {'before': load_before[0], 'after': os.getloadavg()[0]},
        'machine': machine_facts(),
        'framework': _median_fields(runs['framework']),
        'runs': runs,
    }
    if reference:
        result['reference'] = _median_fields(runs['reference'])
        pairs = [f['sec_per_step'] / r['sec_per_step'] for f, r in zip(runs['framework'], runs['reference'])]
        result['overhead'] = {
            f'{key}_ratio': result['framework'][key] / result['reference'][key]
            for key in ('sec_per_step', 'sec_per_step_min', 'cpu_sec_per_step')}
        result['overhead'].update(paired_ratio_median=statistics.median(pairs), paired_ratios=pairs)
        result['loss_max_abs_diff'] = max(abs(f - r) for f, r in zip(result['framework']['losses'],
                                                                      result['reference']['losses']))
    return result


def format_table(result: dict) -> str:
    """The result as aligned text: one row per measure, one column per loop, then the overhead
    ratios and the machine load."""
    loops = [name for name in ('framework', 'reference') if name in result]
    rows = [['', *loops]]
    rows += [[title, *(fmt.format(result[name][key]) if key in result[name] else '-' for name in loops)]
             for key, title, fmt in FIELDS if key in result['framework']]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [row[0].ljust(widths[0]) + ''.join(cell.rjust(width + 2) for cell, width in zip(row[1:], widths[1:]))
             for row in rows]
    if 'overhead' in result:
        overhead = result['overhead']
        lines.append(f'framework / bare loop: median s/step {overhead["sec_per_step_ratio"]:.3f}, '
                     f'fastest s/step {overhead["sec_per_step_min_ratio"]:.3f}, '
                     f'CPU s/step {overhead["cpu_sec_per_step_ratio"]:.3f} '
                     f'(median of paired repeats {overhead["paired_ratio_median"]:.3f})')
        lines.append(f'losses of the two loops: largest difference {result["loss_max_abs_diff"]:.2e} '
                     f'over {len(result["framework"]["losses"])} steps')
    load = result['load_average_1min']
    deepspeed = f', DeepSpeed {result["deepspeed"]}' if result.get('deepspeed') else ''
    lines.append(f'{result["steps"]} steady steps after {result["warmup"]} warm-up, {result["repeats"]} repeat(s){deepspeed}, '
                 f'device {result["device"]}, {result["torch_threads"]} torch threads on {result["cpu_count"]} CPUs, '
                 f'1-min load {load["before"]:.1f} -> {load["after"]:.1f}')
    if 'machine' in result:
        lines.append(format_machine_facts(result['machine']))
    return '\n'.join(lines)
