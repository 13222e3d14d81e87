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


# A step shorter than this is within the reach of timer, scheduler and allocator noise: a few
# milliseconds of either loop move the ratio by percents (a 0.04 s tiny step gave paired ratios
# from 0.96 to 1.03 on an idle machine).
SHORT_STEP_SEC = 0.2
# Background load the bench tolerates on top of its own torch threads: half a core.
SPARE_LOAD = 0.5
# Paired ratios spread wider than this cannot tell a 1.05 overhead from none.
RATIO_SPREAD = 0.05


def spread(values: list[float]) -> dict[str, float]:
    """``min`` / ``median`` / ``max`` of ``values``."""
    return {'min': min(values), 'median': statistics.median(values), 'max': max(values)}


def trust_warnings(result: dict) -> list[str]:
    """Why the framework / bare ratio of ``result`` may not mean anything (empty when it can be trusted):
    steps shorter than ``SHORT_STEP_SEC``; other processes' load (the 1-minute load average before
    the bench, or after it less the bench's own torch threads) leaving the bench's torch threads
    fewer free cores than it has threads (``SPARE_LOAD`` tolerated); paired ratios that spread wider
    than ``RATIO_SPREAD``."""
    warnings = []
    step = result['framework']['sec_per_step']
    if step < SHORT_STEP_SEC:
        warnings.append(f'steps take {step:.3f} s, under {SHORT_STEP_SEC} s: timer and scheduling noise move '
                        'the ratio by percents; bench a bigger model or batch for the overhead')
    load, threads, cpus = result['load_average_1min'], result['torch_threads'], result['cpu_count']
    others = max(load['before'], load['after'] - threads)
    if others + threads > cpus + SPARE_LOAD:
        warnings.append(f'machine loaded: 1-min load {load["before"]:.1f} before, {load["after"]:.1f} after, '
                        f'about {others:.1f} of it from other processes, beside {threads} torch threads on '
                        f'{cpus} CPUs: the loops wait for cores and their times mean little')
    if 'overhead' in result:
        ratios = result['overhead']['paired_ratio_spread']
        if ratios['max'] - ratios['min'] > RATIO_SPREAD:
            warnings.append(f'paired ratios spread from {ratios["min"]:.3f} to {ratios["max"]:.3f}, wider than '
                            f'{RATIO_SPREAD}: the overhead is not resolved; use longer steps, more --repeats '
                            'or a quieter machine')
    return warnings


def _median_fields(runs: list[dict]) -> dict:
    """Per measure, the median over repeats (``losses`` are the same in every repeat: the first's)."""
    return {key: runs[0][key] if key == 'losses' else statistics.median(run[key] for run in runs) for key in runs[0]}


def benchmark(cfg, steps: int, warmup: int, repeats: int = 1, reference: bool = True,
              deepspeed: str | None = None) -> dict:
    """Time ``cfg`` through the runner (and the bare loop), alternating ``repeats`` times; medians per field.

    ``overhead`` holds framework / bare-loop ratios of the median, the fastest and the CPU seconds
    per step, and the median of the per-repeat ratios (each pair ran back to back, so slow phases
    of a shared machine cancel in part) with their ``paired_ratio_spread`` (min / median / max);
    ``warnings`` says why the ratio may not be trusted (``trust_warnings``). ``deepspeed`` (a
    ``--deepspeed`` value) runs both loops through a DeepSpeed engine.
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
        result['overhead'].update(paired_ratio_median=statistics.median(pairs), paired_ratios=pairs,
                                  paired_ratio_spread=spread(pairs))
        result['loss_max_abs_diff'] = max(abs(f - r) for f, r in zip(result['framework']['losses'],
                                                                      result['reference']['losses']))
    result['warnings'] = trust_warnings(result)
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
        ratios = overhead['paired_ratio_spread']
        lines.append(f'framework / bare loop, paired repeats: min {ratios["min"]:.3f} / median {ratios["median"]:.3f} '
                     f'/ max {ratios["max"]:.3f} over {len(overhead["paired_ratios"])}; '
                     f'medians of the repeats: s/step {overhead["sec_per_step_ratio"]:.3f}, '
                     f'fastest s/step {overhead["sec_per_step_min_ratio"]:.3f}, '
                     f'CPU s/step {overhead["cpu_sec_per_step_ratio"]:.3f}')
        lines.append(f'losses of the two loops: largest difference {result["loss_max_abs_diff"]:.2e} '
                     f'over {len(result["framework"]["losses"])} steps')
    load = result['load_average_1min']
    deepspeed = f', DeepSpeed {result["deepspeed"]}' if result.get('deepspeed') else ''
    lines.append(f'{result["steps"]} steady steps after {result["warmup"]} warm-up, {result["repeats"]} repeat(s){deepspeed}, '
                 f'device {result["device"]}, {result["torch_threads"]} torch threads on {result["cpu_count"]} CPUs, '
                 f'1-min load {load["before"]:.1f} -> {load["after"]:.1f}')
    if 'machine' in result:
        lines.append(format_machine_facts(result['machine']))
    lines += [f'warning: {warning}' for warning in result.get('warnings', ())]
    return '\n'.join(lines)
