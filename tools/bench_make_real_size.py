"""Write random-initialised models at the seeds' real sizes (bf16 shards) for GPU benchmarks.

    python tools/make_tiny_zoo.py tiny_models
    python tools/bench_make_real_size.py tiny_models bench_models                 # all three
    python tools/bench_make_real_size.py tiny_models bench_models llama3_8b_instruct

Models: internlm2_chat_1_8b (1.89B), llama3_8b_instruct (8.03B), clip_vit_large_p14_336 (CLIP
ViT-L/14 at 336 px; its text tower stays tiny). See mmllava/bench/real_size.py. The 8B folder
takes 16 GB of disk and about 5 GB of memory while it is written.
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    from mmllava.bench.real_size import REAL_SIZES, build_real_size

    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('tiny_zoo', help='folder made by tools/make_tiny_zoo.py (tokenizers and formats come from it)')
    parser.add_argument('out', help='folder to write the models into')
    parser.add_argument('names', nargs='*', metavar='NAME', help=f'models (default: all): {", ".join(REAL_SIZES)}')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(REAL_SIZES))
    if unknown:
        parser.error(f'unknown model(s) {", ".join(unknown)}; known: {", ".join(REAL_SIZES)}')
    for name in args.names or REAL_SIZES:
        start = time.time()
        folder = build_real_size(name, args.out, args.tiny_zoo, seed=args.seed)
        print(f'{folder}: written in {time.time() - start:.0f} s', flush=True)


if __name__ == '__main__':
    main()
