"""The shipped tiny QLoRA LLaVA fine-tune config through ``mmllava train --deepspeed deepspeed_zero2``
(seed 000's command) on the tiny zoo: NF4 LLM + LoRA (with dropout) + LoRA on the vision tower
train, checkpoint, and a run resumed from the first checkpoint logs the same losses as the
original run (sampler position, optimizer, scheduler and RNG all come back)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert again == pytest.approx({step: losses[step] for step in (3, 4)}, rel=1e-6)
