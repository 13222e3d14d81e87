"""The ``train`` verb: exit codes, one-line user errors, --cfg-options reaching derived fields,
the work dir's contents, the warm-up fix."""
from __future__ import annotations

import json

import pytest

from engine_toy import read_losses, run_train, write_toy_config
from mmllava.cli import main
from mmllava.engine.schedule import scheduler_boundary_iters


def test_user_error_is_one_line_exit_1_and_cfg_options_reach_derived_fields(tmp_path):
    """A process-level check: overriding data_root moves data_path (a derived field) to a missing
    file; the error is one line, exit status 1, no traceback."""
    config = write_toy_config(tmp_path)
    result = run_train(config, '--work-dir', tmp_path / 'work', '--cfg-options', 'data_root=/nonexistent/',
                       cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith('mmllava train: error: ')
    assert 'data file not found: /nonexistent/toy.json' in result.stderr
    assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('args, message', [
    (['no_such_config'], "no config named 'no_such_config'"),
    (['{cfg}', '--deepspeed', 'zero9'], '--deepspeed zero9: neither a JSON file nor a shipped config'),
    (['{cfg}', '--resume', '/nonexistent/iter_1.pth'], 'checkpoint not found: /nonexistent/iter_1.pth'),
    (['{cfg}', '--resume', '{zero_folder}'], 'was written with --deepspeed; resume it with --deepspeed'),
    (['{cfg}', '--cfg-options', "train_dataloader.sampler={{'type':'DefaultSampler','shuffle':True}}"],
     "{cfg}: train_dataloader.sampler: DefaultSampler.__init__() got unexpected keyword arguments "
     "'length_property', 'per_device_batch_size'"),
    (['{cfg}', '--cfg-options', 'train_cfg.max_epochs=None'],
     'train_cfg: give exactly one of max_iters and max_epochs (edit train_cfg in {cfg})'),
])
def test_user_errors_are_reported_as_one_line(tmp_path, capsys, args, message):
    config = write_toy_config(tmp_path)
    zero_folder = tmp_path / 'iter_4.pth'  # what --deepspeed writes: a folder of DeepSpeed's files
    zero_folder.mkdir()
    (zero_folder / 'mp_rank_00_model_states.pt').write_bytes(b'')
    args = [a.format(cfg=config, zero_folder=zero_folder) for a in args]
    assert main(['train', *args, '--work-dir', str(tmp_path / 'work')]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('mmllava train: error:')]
    assert len(errors) == 1 and message.format(cfg=config) in errors[0]


def test_cfg_options_move_the_dataset_and_work_dir_holds_the_run(tmp_path):
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
    # the scheduler's float64 arithmetic on a few numbers, no reduction: approx's rel=1e-6 is far above it
    assert lrs[0] == pytest.approx(1e-7) and lrs[1] == pytest.approx(1e-2)
    assert lrs[3] < lrs[2] <= 1e-2 and lrs[-1] < lrs[3] and min(lrs[1:]) > 1e-5


def test_epoch_hooks_run_around_each_pass(tmp_path):
    """TrainLoop is iteration-based but calls the epoch hooks per pass: per-epoch checkpoints work."""
    config = write_toy_config(tmp_path / 'cfg')
    work_dir = tmp_path / 'work'
    assert main(['train', str(config), '--work-dir', str(work_dir), '--cfg-options',
                 'default_hooks.checkpoint.by_epoch=True', 'default_hooks.checkpoint.interval=1']) == 0
    assert sorted(p.name for p in work_dir.glob('*.pth')) == ['epoch_1.pth', 'epoch_2.pth']
    assert (work_dir / 'last_checkpoint').read_text() == str(work_dir / 'epoch_2.pth')
