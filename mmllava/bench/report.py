"""Interleaved repeats of the two loops, and their result as a JSON record and as a table."""
from __future__ import annotations

import copy
import gc
import os
import statistics

import torch

from mmllava.bench.runs import run_framework, run_reference, runner_config

# (field, column title, format) in the order the table prints them
FIELDS = [
    ('sec_per_step', 's/step', '{:.4f}'),
    ('samples_per_sec', 'samples/s', '{:.1f}'),
    ('real_tokens_per_sec', 'real tok/s', '{:.0f}'),
    ('real_tokens_per_step', 'real tok/step', '{:.0f}'),
    ('padding_fraction', 'padding', '{:.1%}'),
    ('data_wait_sec_per_step', 'data wait s/step', '{:.4f}'),
    ('data_wait_fraction', 'data wait', '{:.1%}'),
    ('cpu_rss_mb', 'peak RSS MB', '{:.0f}'),
    ('cuda_max_allocated_mb', 'CUDA max alloc MB', '{:.0f}'),
]


def _median_fields(runs: list[dict]) -> dict:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def benchmark(cfg, steps: int, warmup: int, repeats: int = 1, reference: bool = True) -> dict:
    """Time ``cfg`` through the runner (and the bare loop), alternating ``repeats`` times; medians per field.

    ``overhead`` is the framework's median step time over the bare loop's, and the median of the
    per-repeat ratios (each pair ran back to back, so slow phases of a shared machine cancel).
    """
    runs = {'framework': [], 'reference': []}
    load_before = os.getloadavg()
    for _ in range(repeats):
        runs['framework'].append(run_framework(copy.deepcopy(cfg), steps, warmup))
        gc.collect()
        if reference:
            reference_cfg = runner_config(copy.deepcopy(cfg), steps, warmup, work_dir='unused')
            runs['reference'].append(run_reference(reference_cfg, steps, warmup))
            gc.collect()
    result = {
        'config': cfg.filename, 'steps': steps, 'warmup': warmup, 'repeats': repeats,
        'device': torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu',
        'torch_threads': torch.get_num_threads(), 'cpu_count': os.cpu_count(),
        'load_average_1min': {'before': load_before[0], 'after': os.getloadavg()[0]},
        'framework': _median_fields(runs['framework']),
        'runs': runs,
    }
    if reference:
        result['reference'] = _median_fields(runs['reference'])
        pairs = [f['sec_per_step'] / r['sec_per_step'] for f, r in zip(runs['framework'], runs['reference'])]
        result['overhead'] = {
            'sec_per_step_ratio': result['framework']['sec_per_step'] / result['reference']['sec_per_step'],
            'paired_ratio_median': statistics.median(pairs),
            'paired_ratios': pairs,
        }
    return result


def format_table(result: dict) -> str:
    """The result as aligned text: one row per loop, then the overhead ratio and the machine load."""
    loops = [name for name in ('framework', 'reference') if name in result]
    columns = [(key, title, fmt) for key, title, fmt in FIELDS if key in result['framework']]
    rows = [['loop'] + [title for _, title, _ in columns]]
    rows += [[name] + [fmt.format(result[name][key]) for key, _, fmt in columns] for name in loops]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ['  '.join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    if 'overhead' in result:
        overhead = result['overhead']
        lines.append(f'framework / bare loop, seconds per step: {overhead["sec_per_step_ratio"]:.3f} '
                     f'(median of paired repeats {overhead["paired_ratio_median"]:.3f})')
    load = result['load_average_1min']
    lines.append(f'{result["steps"]} steady steps after {result["warmup"]} warm-up, {result["repeats"]} repeat(s), '
                 f'device {result["device"]}, {result["torch_threads"]} torch threads on {result["cpu_count"]} CPUs, '
                 f'1-min load {load["before"]:.1f} -> {load["after"]:.1f}')
    return '\n'.join(lines)
