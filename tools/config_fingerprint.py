"""What the tiny configs train, as numbers to compare across a refactor: for each tiny config, one
epoch of ``mmllava train`` (pretrains first, so the fine-tunes find their projector) and the
logged losses, the trainable / total parameter counts and the chat evaluations' answers.

    python tools/config_fingerprint.py --out before.json
    python tools/config_fingerprint.py --out after.json && diff before.json after.json

Each run is a fresh process in one scratch folder (``--work``, default a temporary one).
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

LOSS = re.compile(r'Iter\(train\)\s+\[\s*(\d+)/\s*\d+\].*?\bloss: ([0-9.]+)')
PARAMS = re.compile(r'[\d.]+[kMG]? trainable / [\d.]+[kMG]? parameters')
ANSWER = re.compile(r"^\[[^\]]*\] '.*' -> '.*'$", re.MULTILINE)


def tiny_configs() -> list[str]:
    """Every shipped tiny config, pretrains first."""
    from mmllava.config_source import shipped_configs

    names = [name for name in shipped_configs() if '_tiny_' in name]
    return sorted(names, key=lambda name: (not name.endswith('_pretrain'), name))


def train(name: str, work: Path) -> None:
    """One epoch of ``name`` in ``work``, every iteration logged."""
    out = subprocess.run([sys.executable, '-m', 'mmllava', 'train', name, '--cfg-options', 'max_epochs=1',
                          'default_hooks.logger.interval=1'],
                         cwd=work, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f'{name}: train failed ({out.returncode}):\n{out.stderr[-3000:]}')


def fingerprint(name: str, work: Path) -> dict:
    """The losses, parameter counts and chat answers in the log of ``name``'s run in ``work``."""
    log = '\n'.join(p.read_text() for p in sorted((work / 'work_dirs' / name).glob('*/*.log')))
    losses = [(int(m[1]), float(m[2])) for m in LOSS.finditer(log)]
    answers = [m[0].split('] ', 1)[1] for m in ANSWER.finditer(log)]  # without the image's (cache) path
    params = PARAMS.search(log)
    return {'losses': losses, 'parameters': params.group(0) if params else None, 'answers': answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', required=True, type=Path)
    parser.add_argument('--work', type=Path, help='scratch folder (default: a temporary one)')
    parser.add_argument('--logs-only', action='store_true', help='read the runs already in --work, train nothing')
    parser.add_argument('--only', nargs='*', help='these configs only (their pretrains must be in --work)')
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix='mmllava_fingerprint_') as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        result = {}
        for name in args.only or tiny_configs():
            if not args.logs_only:
                train(name, work)
            result[name] = fingerprint(name, work)
            print(f'{name}: {len(result[name]["losses"])} losses, last {result[name]["losses"][-1:]}', flush=True)
        args.out.write_text(json.dumps(result, indent=1) + '\n')


if __name__ == '__main__':
    main()
