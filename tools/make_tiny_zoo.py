"""Write the tiny model zoo: ``python tools/make_tiny_zoo.py OUT_DIR [--seed N] [--names NAME ...]``.

Works from any directory, installed or not (the repository root is put on ``sys.path``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmllava.tiny.zoo import ZOO_NAMES, build_tiny_zoo  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', help='folder to write one sub-folder per model into')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--names', nargs='+', choices=ZOO_NAMES, help='models to build (default: all)')
    args = parser.parse_args(argv)
    for name, path in build_tiny_zoo(args.out_dir, seed=args.seed, names=args.names).items():
        print(f'{name}: {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
