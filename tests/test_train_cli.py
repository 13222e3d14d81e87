"""The ``train`` verb: exit codes, one-line user errors, --cfg-options reaching derived fields,
the work dir's contents, the warm-up fix."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine_toy import read_losses, train_env, write_toy_config
from mmllava.cli import main
from mmllava.engine.compat import scheduler_boundary_iters


def _train(*args, cwd):
    return subprocess.run([sys.executable, '-m', 'mmllava.cli', 'train', *map(str, args)], cwd=cwd,
                          env=train_env(), capture_output=True, text=True, timeout=300)


def test_training_crash_exits_nonzero_with_traceback(tmp_path):
    config = write_toy_config(tmp_path)
    result = _train(config, '--work-dir', tmp_path / 'work', '--cfg-options', 'crash_at=2', cwd=tmp_path)
    assert result.returncode != 0
    assert 'Traceback' in result.stderr and 'simulated crash at iteration 2' in result.stderr


@pytest.mark.parametrize('args, message', [
    (['no_such_config'], "no config named 'no_such_config'"),
    (['{cfg}', '--cfg-options', 'data_root=/nonexistent/'], 'data file not found: /nonexistent/toy.json'),
    (['{cfg}', '--deepspeed', 'zero9'], '--deepspeed zero9: neither a JSON file nor a shipped config'),
    (['{cfg}', '--resume', '/nonexistent/iter_1.pth'], 'checkpoint not found: /nonexistent/iter_1.pth'),
])
def test_user_errors_are_one_line_and_exit_1(tmp_path, args, message):
    config = write_toy_config(tmp_path)
    result = _train(*[a.format(cfg=config) for a in args], '--work-dir', tmp_path / 'work', cwd=tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith('mmllava train: error:')]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert 'Traceback' not in result.stderr


def test_cfg_options_reach_derived_fields_and_work_dir_holds_the_run(tmp_path):
    config = write_toy_config(tmp_path / 'cfg')
    other = tmp_path / 'other_data'
    other.mkdir()
    (other / 'toy.json').write_text(json.dumps({'num_samples': 8, 'seed': 1}))
    work_dir = tmp_path / 'work'
    assert main(['train', str(config), '--work-dir', str(work_dir),
                 '--cfg-options', f'data_root={other}/', 'max_epochs=1']) == 0
    # 8 samples / batch 4 = 2 iterations: the dataset came from the overridden data_root
    assert [step for step, _ in read_losses(work_dir)] == [1, 2]
    dumped = (work_dir / 'toy_config.py').read_text()
    assert f"data_path = '{other}/toy.json'" in dumped
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'iter_2.pth')
    assert list(work_dir.glob('*/vis_data/events.out.tfevents.*')), 'no TensorBoard scalars'
    log = next(work_dir.glob('*/*.log')).read_text()
    assert 'tokens_per_sec' in log and 'grad_norm' in log and 'eta' in log


@pytest.mark.parametrize('epochs, epoch_length, expected', [
    (0.03, 40, 2),  # XTuner's default ratio on a short run: int() gives 1 -> lr stuck at 2e-9
    (0.03, 20, 2),  # int() gives 0 -> mmengine raises "end should be larger than begin"
    (0.03, 200, 6),  # exact products are not rounded up by float noise
    (0.25, 10, 3),
    (0, 10, 0),
])
def test_warmup_boundaries_round_up_to_a_real_warmup(epochs, epoch_length, expected):
    assert scheduler_boundary_iters(epochs, epoch_length) == expected


def test_short_run_warmup_reaches_base_lr(tmp_path):
    """40 iterations with warmup_ratio 0.03: the lr ramps within 2 iterations, then decays."""
    config = write_toy_config(tmp_path / 'cfg', num_samples=40, batch_size=1, max_epochs=1, save_steps=100)
    work_dir = tmp_path / 'work'
    assert main(['train', str(config), '--work-dir', str(work_dir), '--cfg-options', 'warmup_ratio=0.03']) == 0
    scalars = [json.loads(line) for line in next(work_dir.glob('*/vis_data/scalars.json')).read_text().splitlines()]
    lrs = [s['lr'] for s in scalars if 'lr' in s]
    assert len(lrs) == 40
    assert lrs[0] == pytest.approx(1e-7) and lrs[1] == pytest.approx(1e-2)
    assert lrs[3] < lrs[2] <= 1e-2 and lrs[-1] < lrs[3] and min(lrs[1:]) > 1e-5
