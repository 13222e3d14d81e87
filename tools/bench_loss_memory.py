"""Peak memory of one training step with a 128k-vocabulary tiny LLM: logits only at labelled positions
(``LLaVAModel.labelled_loss``, optionally in recomputed chunks) against the full logits tensor.

    python tools/bench_loss_memory.py tiny_models/clip_vit [--rows 4 --length 512 --answer 0.25]

Each variant runs in a fresh process (peak RSS is per process); the table gives the peak above the
memory held after building the model, and the size of the full fp32 logits for comparison.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

VARIANTS = ('full_logits', 'labelled', 'labelled_chunk_256')


def _peak_rss_mb() -> float:
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) / 1024


def _step(args) -> dict:
    """One forward + backward of ``args.variant`` in this process; peak RSS above the baseline."""
    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    from mmllava.pretrained import load_vision_encoder
    from mmllava.constants import IGNORE_INDEX
    from mmllava.models import LLaVAModel

    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=args.vocab, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    chunk = 256 if args.variant == 'labelled_chunk_256' else 4096
    model = LLaVAModel(llm=llm, visual_encoder=load_vision_encoder(args.clip), use_activation_checkpointing=False,
                       loss_chunk_size=chunk).train()
    input_ids = torch.randint(0, args.vocab, (args.rows, args.length))
    labels = input_ids.clone()
    labels[:, :int(args.length * (1 - args.answer))] = IGNORE_INDEX  # prompt positions carry no label
    data = {'input_ids': input_ids, 'labels': labels, 'attention_mask': torch.ones_like(input_ids)}
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # peak := now
    baseline = _peak_rss_mb()
    if args.variant == 'full_logits':
        logits = model(data, mode='tensor')[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, args.vocab), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    else:
        loss = model(data, mode='loss')['loss']
    loss.backward()
    return {'variant': args.variant, 'loss': loss.item(), 'peak_above_baseline_mb': _peak_rss_mb() - baseline,
            'labelled_positions': int((labels[:, 1:] != IGNORE_INDEX).sum()),
            'full_logits_mb': args.rows * (args.length - 1) * args.vocab * 4 / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('clip', help='a tiny CLIP folder (tools/make_tiny_zoo.py)')
    parser.add_argument('--vocab', type=int, default=128256)
    parser.add_argument('--rows', type=int, default=4)
    parser.add_argument('--length', type=int, default=512)
    parser.add_argument('--answer', type=float, default=0.25, help='labelled fraction at the end of each row')
    parser.add_argument('--variant', choices=VARIANTS, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(_step(args)))
        return
    results = []
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], '--variant', variant],
                             check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        print(f'{r["variant"]:>20}: peak +{r["peak_above_baseline_mb"]:7.0f} MB  loss {r["loss"]:.6f}  '
              f'({r["labelled_positions"]} labelled positions; full fp32 logits {r["full_logits_mb"]:.0f} MB)')


if __name__ == '__main__':
    main()
