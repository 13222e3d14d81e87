"""The tiny Llama-3 LoRA workload measured side by side with XTuner (../shared/ANCHORS.md): one epoch of
``mmllava train``, each run a fresh process, timed from process start to exit.

    python tools/bench_lora_epoch.py --runs 3 --zoo tiny_models --out bench_runs

Workload: the tiny Llama-3-format LLM + 112 px CLIP (ViT frozen), LoRA r=64 / alpha 16 on the LLM
in fp32, batch 4, 160 colour-question samples (40 iterations), no dataloader workers, seed 0,
warm-up ratio 0.1. Per run: s/it (median of iterations 6-40, from the per-iteration log), the
one-epoch wall, peak RSS (the child's ``ru_maxrss``), first and last loss and the 1-minute load
before the run; then min / median / max over the runs. Extra ``--cfg-options`` are appended
(e.g. ``model.llm.quantization_config=None`` is already there: drop it with ``--qlora``).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIG = 'llava_tiny_llama3_instruct_qlora_clip_finetune'
ITER_LINE = re.compile(r'Iter\(train\)\s+\[\s*(\d+)/\s*\d+\].*?\bloss: ([0-9.]+).*?\btime: ([0-9.]+)')
ITER_LINE_TIME_FIRST = re.compile(r'Iter\(train\)\s+\[\s*(\d+)/\s*\d+\].*?\btime: ([0-9.]+).*?\bloss: ([0-9.]+)')


def clip_112(zoo: Path, out: Path) -> Path:
    """The comparison's vision tower: the zoo's tiny CLIP at 112 px with 14 px patches (64 image
    positions, as the zoo's 64 px / 8 px one), random weights from seed 0, saved by transformers."""
    import json

    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    folder = out / 'clip_vit_112'
    if (folder / 'config.json').exists():
        return folder
    config = json.loads((zoo / 'clip_vit' / 'config.json').read_text())
    config['vision_config'].update(image_size=112, patch_size=14)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig.from_dict(config)).save_pretrained(folder)
    processor = CLIPImageProcessor.from_pretrained(zoo / 'clip_vit')
    processor.size, processor.crop_size = {'shortest_edge': 112}, {'height': 112, 'width': 112}
    processor.save_pretrained(folder)
    return folder


def _options(zoo: Path, clip: Path, data: Path, qlora: bool) -> list[str]:
    options = [f'llm_name_or_path={zoo / "llama3_instruct"}', f'visual_encoder_name_or_path={clip}',
               f'data_root={data}/', 'pretrained_pth=None', 'batch_size=4', 'dataloader_num_workers=0',
               'max_epochs=1', 'warmup_ratio=0.1', 'evaluation_freq=None', 'save_steps=100000',
               'default_hooks.logger.interval=1', 'model.visual_encoder_lora=None',
               'model.llm_lora.r=64', 'model.llm_lora.lora_alpha=16']
    if not qlora:
        options.append('model.llm.quantization_config=None')
    return options


def _iterations(log: str) -> list[tuple[int, float, float]]:
    """(iteration, loss, seconds) of every logged training iteration."""
    rows = []
    for line in log.splitlines():
        if match := ITER_LINE.search(line):
            rows.append((int(match[1]), float(match[2]), float(match[3])))
        elif match := ITER_LINE_TIME_FIRST.search(line):
            rows.append((int(match[1]), float(match[3]), float(match[2])))
    return rows


def one_run(work_dir: Path, options: list[str]) -> dict:
    load = os.getloadavg()[0]
    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / 'stdout.txt', 'w+') as out, open(work_dir / 'stderr.txt', 'w+') as err:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, '-m', 'mmllava', 'train', CONFIG, '--work-dir', str(work_dir),
                                 '--cfg-options', *options], stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS, not the largest child's so far
        wall = time.perf_counter() - start
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f'train failed ({os.waitstatus_to_exitcode(status)}):\n{stderr[-3000:]}')
    log = '\n'.join(p.read_text() for p in sorted(work_dir.glob('*/*.log')))
    rows = _iterations(log + '\n' + stdout + '\n' + stderr)
    steady = [seconds for iteration, _, seconds in rows if 6 <= iteration <= 40]
    if not steady:
        raise SystemExit(f'no per-iteration times in the log of {work_dir}')
    return {'sec_per_it': statistics.median(steady), 'wall': wall, 'iterations': len(rows),
            'peak_rss_mb': usage.ru_maxrss / 1024,
            'first_loss': rows[0][1], 'last_loss': rows[-1][1], 'load_before': load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--zoo', required=True, type=Path, help='tiny model zoo folder (tools/make_tiny_zoo.py)')
    parser.add_argument('--out', required=True, type=Path, help='folder for the data and the work dirs')
    parser.add_argument('--qlora', action='store_true', help='keep the NF4 LLM (QLoRA) instead of fp32 LoRA')
    parser.add_argument('--clip-112', action='store_true',
                        help="the comparison's 112 px CLIP (14 px patches) instead of the zoo's 64 px one")
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE')
    args = parser.parse_args()

    from mmllava.tiny.synthetic import build_synthetic_data

    data = args.out / 'data'
    if not (data / 'finetune.json').exists():  # 148 images + 12 text-only samples = 160 samples
        build_synthetic_data(data, seed=0, num_train=148, num_eval=24, kinds=('color',))
    zoo = args.zoo.resolve()
    clip = clip_112(zoo, args.out.resolve()) if args.clip_112 else zoo / 'clip_vit'
    options = _options(zoo, clip, data.resolve(), args.qlora) + args.cfg_options
    runs = []
    for index in range(args.runs):
        run = one_run(args.out / f'run_{int(time.time())}_{index}', options)
        runs.append(run)
        print(f'run {index}: {run["sec_per_it"]:.4f} s/it, wall {run["wall"]:.1f} s, '
              f'peak RSS {run["peak_rss_mb"]:.0f} MB, '
              f'{run["iterations"]} iterations, loss {run["first_loss"]:.3f} -> {run["last_loss"]:.3f}, '
              f'load before {run["load_before"]:.2f}', flush=True)
    for key in ('sec_per_it', 'wall'):
        values = [run[key] for run in runs]
        print(f'{key}: min {min(values):.4f} / median {statistics.median(values):.4f} / max {max(values):.4f}')


if __name__ == '__main__':
    main()
