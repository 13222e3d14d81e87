"""Resume continues exactly: losses after a crash + resume equal the uninterrupted run's (CPU, fp32).

The toy model has dropout and the config's seed is None, so this needs the RNG state, the
checkpoint's seed for the sampler's shuffle, and the sampler position (mid-epoch) restored.
"""
from __future__ import annotations

import pytest

from engine_toy import read_losses, write_toy_config
from mmllava.cli import main


def _losses_by_iter(work_dir):
    """Losses of the last run to reach each iteration (a resumed run overwrites the crashed one's)."""
    return {int(step): loss for step, loss in read_losses(work_dir)}


@pytest.mark.parametrize('save_steps, crash_at, resumed_from, resume_args', [
    (4, 7, 4, ['--resume']),  # mid-epoch (6 batches per epoch)
    (3, 8, 6, ['--cfg-options', 'resume=True', 'load_from={work_dir}/iter_6.pth']),  # as the InternVL2-2B food fine-tune resumes, epoch end
])
def test_resumed_losses_equal_uninterrupted_run(tmp_path, save_steps, crash_at, resumed_from, resume_args):
    config = write_toy_config(tmp_path / 'cfg', save_steps=save_steps)
    reference, resumed = tmp_path / 'reference', tmp_path / 'resumed'
    assert main(['train', str(config), '--work-dir', str(reference), '--seed', '3']) == 0

    with pytest.raises(RuntimeError, match='simulated crash'):
        main(['train', str(config), '--work-dir', str(resumed), '--seed', '3',
              '--cfg-options', f'crash_at={crash_at}'])
    assert len(read_losses(resumed)) == crash_at - 1
    # no --seed: the checkpoint's seed must come back (config says seed=None)
    args = [a.format(work_dir=resumed) for a in resume_args]
    assert main(['train', str(config), '--work-dir', str(resumed), *args]) == 0
    assert read_losses(resumed)[crash_at - 1][0] == resumed_from + 1

    expected = _losses_by_iter(reference)
    assert sorted(expected) == list(range(1, 13))
    assert _losses_by_iter(resumed) == expected  # exact: same CPU ops in the same order
