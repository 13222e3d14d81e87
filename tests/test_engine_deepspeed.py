"""``--deepspeed`` on CPU: one process trains, writes and resumes ZeRO-2 checkpoints; two processes
give the loss curve of one process with the same global batch.

No DeepSpeed op is JIT-compiled here: the torch optimizer goes through
``zero_allow_untested_optimizer`` and the CPU shm op is skipped (``mmllava.engine.compat``), so a
fresh machine pays no ~150 s build.
"""
from __future__ import annotations

import pytest
import torch
from engine_toy import read_losses, run_train, train_env, write_toy_config
from tolerances import rounding_tolerance

from mmllava.cli import main
from mmllava.engine.deepspeed import find_deepspeed_config, resolve_deepspeed_config
from mmllava.errors import MMLLaVAError

TOY_PARAMETERS = 8 * 32 + 32 + 32 + 1  # engine_toy.ToyModel: Linear(8, 32), Linear(32, 1)


def test_auto_fields_follow_the_config(tmp_path):
    from mmllava.config import load_config

    cfg = load_config(write_toy_config(tmp_path, batch_size=3))
    ds = resolve_deepspeed_config('deepspeed_zero2', cfg)
    assert ds['train_micro_batch_size_per_gpu'] == 3
    assert ds['gradient_accumulation_steps'] == 1 and ds['gradient_clipping'] == 1
    assert ds['zero_optimization']['stage'] == 2
    assert ds['bf16']['enabled'] is False and ds['fp16']['enabled'] is False  # fp32 on CPU
    assert find_deepspeed_config('zero3').name == 'zero3.json'
    with pytest.raises(MMLLaVAError, match='zero1, zero2'):
        find_deepspeed_config('zero4')


def _optimizer_tolerance(loss: float, step: int) -> float:
    """The toy model's losses of two runs whose steps sum the 321 parameters' gradient norm (or a
    batch) in another order: one fp32 rounding of a 321-term sum per step so far."""
    return rounding_tolerance(torch.float32, TOY_PARAMETERS, abs(loss), sequential=step)


def test_zero2_single_process_trains_checkpoints_and_resumes(tmp_path):
    config = write_toy_config(tmp_path / 'cfg', save_steps=4)
    reference, work_dir = tmp_path / 'reference', tmp_path / 'zero2'
    assert main(['train', str(config), '--work-dir', str(reference), '--seed', '3']) == 0

    crashed = run_train(config, '--work-dir', work_dir, '--deepspeed', 'deepspeed_zero2', '--seed', 3,
                     '--cfg-options', 'crash_at=7', cwd=tmp_path)
    assert crashed.returncode != 0  # XTuner exits 0 here
    assert 'Traceback' in crashed.stderr and 'simulated crash at iteration 7' in crashed.stderr
    checkpoint = work_dir / 'iter_4.pth'
    assert (work_dir / 'last_checkpoint').read_text() == str(checkpoint)
    assert (checkpoint / 'mp_rank_00_model_states.pt').is_file()
    assert list(checkpoint.glob('*optim_states.pt'))

    resumed = run_train(config, '--work-dir', work_dir, '--deepspeed', 'zero2', '--resume', cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resuming at epoch 0, batch 4 of 6' in resumed.stdout + resumed.stderr
    losses = {step: loss for step, loss in read_losses(work_dir)}
    expected = {step: loss for step, loss in read_losses(reference)}
    assert sorted(losses) == list(range(1, 13))
    # fp32 ZeRO-2 = plain AdamW to rounding: both run the same kernels on this CPU; only the
    # gradient norm (for clipping) sums the 321 parameters in another order (flat buffer vs per
    # tensor), each step's update scaled by it: one such rounding more per step.
    for step, loss in losses.items():
        assert loss == pytest.approx(expected[step], abs=_optimizer_tolerance(expected[step], step))


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    """2 ranks x batch 2 under ZeRO-2 vs 1 process x batch 4: same samples per step (the sampler
    splits each global batch), gradients averaged over ranks, logged loss averaged over ranks.
    Dropout is off: ranks draw their masks from the same seed, so masks would differ from one
    process drawing for 4 samples. Only the order of sums differs (see _optimizer_tolerance)."""
    config = write_toy_config(tmp_path / 'cfg', save_steps=6)
    single, double = tmp_path / 'single', tmp_path / 'double'
    assert main(['train', str(config), '--work-dir', str(single), '--seed', '3',
                 '--cfg-options', 'model.dropout=0.0']) == 0

    env = train_env(NPROC_PER_NODE='2')
    result = run_train(config, '--work-dir', double, '--deepspeed', 'zero2', '--seed', 3,
                    '--cfg-options', 'batch_size=2', 'model.dropout=0.0', cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'torch.distributed.run --nproc_per_node=2' in result.stdout
    assert sorted(p.name for p in (double / 'iter_12.pth').glob('*optim_states.pt')) == [
        'zero_pp_rank_0_mp_rank_00_optim_states.pt', 'zero_pp_rank_1_mp_rank_00_optim_states.pt']

    one, two = read_losses(single), read_losses(double)
    assert [step for step, _ in two] == list(range(1, 13))
    # the gradient norm and the batch mean sum in another order (two half batches, then the
    # average over ranks): one rounding of a 321-term sum more per step
    for (step, loss), (_, expected) in zip(two, one):
        assert loss == pytest.approx(expected, abs=_optimizer_tolerance(expected, step))
    assert read_losses(double, rank=1) == two  # every rank logs the mean over ranks
