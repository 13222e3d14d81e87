"""The shipped tiny InternVL config through ``mmllava train`` on CPU: LoRA fine-tuning learns the
synthetic shapes task from pixels (held-out exact match), and resuming from a mid-run checkpoint
(seed 003's ``load_from`` + ``resume=True``, or ``--resume``) logs the uninterrupted run's losses."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmllava.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIG = 'internvl_tiny_internlm2_lora_finetune'
DATA = REPO / 'data' / 'synthetic'


def _options(zoo, *extra):
    return ['--cfg-options', f'path={zoo["internvl2_official"]}', f'data_root={DATA}/', *extra]


def _losses(work_dir: Path) -> dict[int, float]:
    scalars = next(work_dir.glob('*/vis_data/scalars.json')).read_text().splitlines()
    return {record['step']: record['loss'] for record in map(json.loads, scalars) if 'loss' in record}


def exact_match(model, dataset) -> float:
    """Greedy answers to the first question of every sample, compared with its gold answer."""
    tokenizer = dataset.tokenizer
    stop = [tokenizer.convert_tokens_to_ids('<|im_end|>'), tokenizer.eos_token_id]
    correct = 0
    for index in range(len(dataset)):
        item = dataset[index]
        prompt_length = next(i for i, label in enumerate(item['labels']) if label != -100)
        new = model.generate(torch.tensor([item['input_ids'][:prompt_length]]), pixel_values=item['pixel_values'],
                             max_new_tokens=6, do_sample=False, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
        gold = [t for t in item['labels'][prompt_length:] if t != -100]
        correct += tokenizer.decode(new[0], skip_special_tokens=True).strip() == tokenizer.decode(
            gold, skip_special_tokens=True).strip()
    return correct / len(dataset)


def test_tiny_internvl_lora_learns_from_pixels(tiny_zoo, tmp_path):
    from mmllava.config import build, load_config, parse_cfg_options
    from mmllava.data.internvl_dataset import InternVLDataset

    work_dir = tmp_path / 'work'
    assert main(['train', CONFIG, '--work-dir', str(work_dir), *_options(tiny_zoo)]) == 0
    cfg = load_config(CONFIG, parse_cfg_options(_options(tiny_zoo)[1:]))
    dataset = build(cfg.internvl_dataset)
    held_out = InternVLDataset(DATA / 'eval.json', DATA / 'images', dataset.tokenizer, dataset.image_processor,
                               max_length=cfg.max_length)
    before = exact_match(build(cfg.model).eval(), held_out)
    cfg.model.pretrained_pth = str(work_dir)  # the work dir's last checkpoint
    after = exact_match(build(cfg.model).eval(), held_out)
    print(f'held-out exact match: {before:.3f} before, {after:.3f} after fine-tuning')
    assert before <= 0.15  # chance: 14 possible one-word answers
    assert after >= 0.9


@pytest.mark.parametrize('resume_args', [
    ['load_from={work_dir}/iter_2.pth', 'resume=True'],  # seed 003: edit the config's last lines
    ['--resume'],
])
def test_resume_continues_with_the_same_losses(tiny_zoo, tmp_path, resume_args):
    short = ['batch_size=2', 'max_epochs=0.031', 'save_steps=2',  # 4 iterations, a checkpoint every 2
             'default_hooks.logger.interval=1', 'log_processor.window_size=1']
    reference, resumed = tmp_path / 'reference', tmp_path / 'resumed'
    assert main(['train', CONFIG, '--work-dir', str(reference), *_options(tiny_zoo, *short)]) == 0
    losses = _losses(reference)
    assert sorted(losses) == [1, 2, 3, 4]

    # the interrupted run: its first checkpoint, as if it had crashed after iteration 2
    resumed.mkdir()
    (resumed / 'iter_2.pth').write_bytes((reference / 'iter_2.pth').read_bytes())
    (resumed / 'last_checkpoint').write_text(str(resumed / 'iter_2.pth'))
    if resume_args == ['--resume']:
        args = ['--resume', *_options(tiny_zoo, *short)]
    else:
        args = _options(tiny_zoo, *short, *(a.format(work_dir=resumed) for a in resume_args))
    assert main(['train', CONFIG, '--work-dir', str(resumed), *args]) == 0
    again = _losses(resumed)
    assert sorted(again) == [3, 4]
    assert again == pytest.approx({step: losses[step] for step in (3, 4)}, rel=1e-6)
