"""Where a training step's time goes: the bare loop of ``mmllava bench`` on a config, under torch.profiler.

    python tools/bench_profile.py llava_tiny_llama3_instruct_qlora_clip_finetune --steps 5 --warmup 3 \\
        --cfg-options llm_name_or_path=bench_models/llama_50m ...

Prints the operators by self CPU time (share of the profiled steps), the steps' wall times, and
with ``--memory`` the peak RSS of the steps above the built model (Linux ``VmHWM``, reset after
warm-up). The loop is the one ``mmllava bench`` times against the runner (``BareLoop``).
"""
from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--steps', type=int, default=5, help='profiled steps')
    parser.add_argument('--warmup', type=int, default=3, help='steps run first, not profiled')
    parser.add_argument('--top', type=int, default=20, help='operators to list')
    parser.add_argument('--no-profile', action='store_true', help='only time the steps (and --memory)')
    parser.add_argument('--memory', action='store_true', help='peak RSS of the steps above the built model')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE')
    args = parser.parse_args()

    import torch

    from mmllava.bench.step_records import current_rss_mb, peak_memory_mb, reset_peak_memory
    from mmllava.bench.runs import BareLoop
    from mmllava.config import load_config, parse_cfg_options

    cfg = load_config(args.config, parse_cfg_options(args.cfg_options))
    loop = BareLoop(cfg, args.steps, args.warmup)
    built_mb = current_rss_mb()
    trainable, total = loop.model.num_parameters()
    print(f'model: {total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M trainable; RSS after build {built_mb:.0f} MB; '
          f'{torch.get_num_threads()} torch threads')
    losses = [float(loop.train_step(next(loop.batches))) for _ in range(args.warmup)]
    batches = [next(loop.batches) for _ in range(args.steps)]  # loaded before the clock and the profiler
    reset_peak_memory()
    times = []

    def steps():
        for batch in batches:
            start = time.perf_counter()
            losses.append(float(loop.train_step(batch)))
            times.append(time.perf_counter() - start)

    if args.no_profile:
        steps()
    else:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            steps()
        events = prof.key_averages()
        total_us = sum(e.self_cpu_time_total for e in events)
        print(f'{"operator":48s} {"calls/step":>10s} {"self ms/step":>12s} {"share":>6s}')
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
            print(f'{e.key[:48]:48s} {e.count / args.steps:10.1f} {e.self_cpu_time_total / 1e3 / args.steps:12.2f} '
                  f'{e.self_cpu_time_total / total_us:6.1%}')
    peak = peak_memory_mb()['cpu_rss_mb']
    real_tokens = statistics.median(int(b['data']['attention_mask'].sum()) for b in batches)
    print(f's/step: min {min(times):.4f} / median {statistics.median(times):.4f} / max {max(times):.4f} '
          f'({len(times)} steps{"" if args.no_profile else ", under the profiler"}); '
          f'real tokens/step {real_tokens:.0f}')
    if args.memory:
        print(f'peak RSS of the steps {peak:.0f} MB: {peak - built_mb:.0f} MB above the built model')
    print('losses: ' + ' '.join(f'{loss:.6f}' for loss in losses))


if __name__ == '__main__':
    main()
