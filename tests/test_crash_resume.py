"""Training killed with SIGKILL at random points -- including inside checkpoint saves, which happen
every iteration here -- and resumed with ``--resume`` ends with the same final weights as an
uninterrupted run (CPU, fp32, same seed)."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from engine_toy import train_env, write_toy_config
from mmllava.checkpoints import safe_torch_load

KILLS = 4


def _train_command(config: Path, work_dir: Path) -> list[str]:
    command = [sys.executable, '-m', 'mmllava.cli', 'train', str(config), '--work-dir', str(work_dir), '--seed', '3']
    return command + ['--resume'] if (work_dir / 'last_checkpoint').is_file() else command


def _checkpoints(work_dir: Path) -> set[str]:
    return {path.name for path in work_dir.glob('iter_*.pth')}


def _final_weights(work_dir: Path) -> dict:
    last = Path((work_dir / 'last_checkpoint').read_text().strip())
    return safe_torch_load(work_dir / last.name)['state_dict']


def _kill_mid_run(config: Path, work_dir: Path, rng: random.Random) -> bool:
    """Start a run, SIGKILL it a random moment after its next checkpoint appears; False if it finished first."""
    before = _checkpoints(work_dir)
    process = subprocess.Popen(_train_command(config, work_dir), env=train_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and _checkpoints(work_dir) == before and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.15))  # lands in a step, in a save, or between the two
    if process.poll() is not None:
        return False
    process.send_signal(signal.SIGKILL)
    process.wait()
    return True


def test_sigkill_at_random_points_then_resume_gives_the_same_weights(tmp_path):
    config = write_toy_config(tmp_path / 'cfg', num_samples=96, max_epochs=2, save_steps=1, save_total_limit=2)
    reference, crashed = tmp_path / 'reference', tmp_path / 'crashed'
    done = subprocess.run(_train_command(config, reference), env=train_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    rng = random.Random(0)
    kills = sum(_kill_mid_run(config, crashed, rng) for _ in range(KILLS))
    assert kills >= 2  # the runs really were interrupted (and then resumed)
    done = subprocess.run(_train_command(config, crashed), env=train_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]

    expected, actual = _final_weights(reference), _final_weights(crashed)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
