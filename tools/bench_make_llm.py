"""Write a bigger Llama-format LLM folder for benchmarks, reusing a tiny zoo model's tokenizer.

    python tools/bench_make_llm.py tiny_models/llama3_instruct bench_models/llama_50m
    python tools/bench_make_llm.py tiny_models/llama3_instruct bench_models/llama_128k --vocab 128256 \\
        --hidden 64 --layers 2 --intermediate 128 --heads 4

Weights are random (seeded); the default shape has about 50M parameters. ``--vocab`` larger than
the tokenizer's only widens the embedding and the LM head (the ids the tokenizer makes stay valid).
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('source', help='tiny Llama-format folder whose tokenizer and special ids are kept')
    parser.add_argument('out', help='folder to write')
    parser.add_argument('--hidden', type=int, default=640)
    parser.add_argument('--layers', type=int, default=9)
    parser.add_argument('--intermediate', type=int, default=2048)
    parser.add_argument('--heads', type=int, default=10)
    parser.add_argument('--vocab', type=int, help='vocabulary size (default: the source model\'s)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(args.source)
    config.update(dict(hidden_size=args.hidden, num_hidden_layers=args.layers, intermediate_size=args.intermediate,
                       num_attention_heads=args.heads, num_key_value_heads=args.heads,
                       head_dim=args.hidden // args.heads,
                       vocab_size=args.vocab or config.vocab_size))
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    out = Path(args.out)
    model.save_pretrained(out)
    for path in Path(args.source).iterdir():
        if path.name not in ('config.json', 'model.safetensors', 'generation_config.json') and path.is_file():
            shutil.copy(path, out / path.name)
    total = sum(p.numel() for p in model.parameters())
    print(f'{out}: {total / 1e6:.1f}M parameters, vocabulary {config.vocab_size}')


if __name__ == '__main__':
    main()
