"""The shipped tiny QLoRA LLaVA fine-tune config through ``mmllava train --deepspeed deepspeed_zero2``
(the LLaVA-InternLM2 QLoRA tutorial's command) on the tiny zoo: NF4 LLM + LoRA (with dropout) + LoRA on the vision tower
train, checkpoint, and a run resumed from the first checkpoint logs the same losses as the
original run (sampler position, optimizer, scheduler and RNG all come back)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = 'llava_tiny_internlm2_chat_qlora_clip_finetune'


def _losses(work_dir: Path) -> dict[int, float]:
    scalars = next(work_dir.glob('*/vis_data/scalars.json')).read_text().splitlines()
    return {record['step']: record['loss'] for record in map(json.loads, scalars) if 'loss' in record}


def _train(work_dir: Path, tiny_zoo, *args):
    options = [f'llm_name_or_path={tiny_zoo["internlm2_chat"]}',
               f'visual_encoder_name_or_path={tiny_zoo["clip_vit"]}', f'data_root={REPO}/data/synthetic/',
               'pretrained_pth=None',
               'batch_size=2', 'max_epochs=0.031', 'save_steps=2', 'evaluation_inputs=[]',
               'default_hooks.logger.interval=1', 'log_processor.window_size=1']  # 4 iterations, per-step losses
    return subprocess.run([sys.executable, '-m', 'mmllava.cli', 'train', CONFIG, '--work-dir', str(work_dir),
                           '--deepspeed', 'deepspeed_zero2', *args, '--cfg-options', *options],
                          cwd=work_dir.parent, capture_output=True, text=True, timeout=300)


def test_tiny_llava_zero2_trains_and_resumes_exactly(tiny_zoo, tmp_path):
    original, resumed = tmp_path / 'original', tmp_path / 'resumed'
    result = _train(original, tiny_zoo)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = _losses(original)
    assert sorted(losses) == [1, 2, 3, 4]
    assert (original / 'iter_2.pth' / 'mp_rank_00_model_states.pt').is_file()
    assert (original / 'last_checkpoint').read_text() == str(original / 'iter_4.pth')

    result = _train(resumed, tiny_zoo, '--resume', str(original / 'iter_2.pth'))
    assert result.returncode == 0, result.stderr[-3000:]
    again = _losses(resumed)
    assert sorted(again) == [3, 4]
    # Both runs on this CPU with the same thread count: the same kernels sum in the same order, so
    # the losses are equal to the bit on any CPU; 8 fp32 ulps are the margin, nothing more.
    assert again == pytest.approx({step: losses[step] for step in (3, 4)}, rel=8 * torch.finfo(torch.float32).eps)


def test_seed_000_literally(tiny_zoo, tmp_path):
    """The LLaVA-InternLM2 QLoRA tutorial with tiny stand-ins: copy-cfg, edit the variables the tutorial edits, train with
    `--deepspeed deepspeed_zero2`, checkpoints appear, and `--resume` picks up the latest."""
    import re

    def cli(*args):
        return subprocess.run([sys.executable, '-m', 'mmllava.cli', *map(str, args)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)

    name = 'llava_internlm2_chat_1_8b_qlora_clip_vit_large_p14_336_lora_e1_gpu8_finetune'
    assert cli('list-cfg', '-p', 'llava_internlm2_chat_1_8b').returncode == 0
    assert cli('copy-cfg', name, tmp_path).returncode == 0
    copy = tmp_path / f'{name}_copy.py'
    data = REPO / 'data' / 'synthetic'
    edits = {'pretrained_pth': None, 'llm_name_or_path': str(tiny_zoo['internlm2_chat']),
             'visual_encoder_name_or_path': str(tiny_zoo['clip_vit']), 'data_root': f'{data}/',
             'data_path': "data_root + 'finetune.json'", 'image_folder': "data_root + 'images'", 'batch_size': 2,
             'evaluation_inputs': ['Please describe this picture', 'What is the equipment in the image?'],
             # not in the tutorial: a CPU-sized run of the full-size recipe
             'max_epochs': 0.031, 'save_steps': 2, 'evaluation_images': "data_root + 'images/eval_0000.png'",
             'max_length': 256}
    text = copy.read_text()
    for key, value in edits.items():
        literal = value if isinstance(value, str) and value.startswith('data_root') else repr(value)
        text, count = re.subn(rf'^{key} = .*$', lambda _: f'{key} = {literal}', text, count=1, flags=re.M)
        assert count == 1, key
    # a CPU has no bf16 QLoRA kernels worth the wait: the tutorial's GPU dtypes become fp32 here
    copy.write_text(text.replace('torch.bfloat16', 'torch.float32'))

    result = cli('train', copy, '--deepspeed', 'deepspeed_zero2')
    assert result.returncode == 0, result.stderr[-3000:]
    work_dir = tmp_path / 'work_dirs' / f'{name}_copy'
    assert (work_dir / 'iter_2.pth' / 'mp_rank_00_model_states.pt').is_file()
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'iter_4.pth')
    result = cli('train', copy, '--deepspeed', 'deepspeed_zero2', '--resume')
    assert result.returncode == 0, result.stderr[-3000:]
    log = sorted(work_dir.glob('*/*.log'))[-1].read_text()
    assert f'Resume checkpoint from {work_dir / "iter_4.pth"}' in log
    assert 'resumed epoch: 0, iter: 4' in log
