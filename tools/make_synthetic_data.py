"""Write the synthetic shapes data set: ``python tools/make_synthetic_data.py OUT_DIR [--seed N]``.

Works from any directory, installed or not (the repository root is put on ``sys.path``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmllava.tiny.synthetic import KINDS, build_synthetic_data  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', help='folder to write pretrain/finetune/eval JSON and images/ into')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-train', type=int, default=240, help='training images')
    parser.add_argument('--num-eval', type=int, default=48, help='held-out evaluation images')
    parser.add_argument('--kinds', nargs='+', default=list(KINDS), choices=KINDS, help='question kinds')
    args = parser.parse_args(argv)
    paths = build_synthetic_data(args.out_dir, seed=args.seed, num_train=args.num_train,
                                 num_eval=args.num_eval, kinds=args.kinds)
    for key, path in paths.items():
        print(f'{key}: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
