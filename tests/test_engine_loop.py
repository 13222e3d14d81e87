"""TrainLoop's per-step shortcuts and the dataloader workers of the runner (compat layer)."""
from __future__ import annotations

import sys

import pytest
import torch
from mmengine.hooks import Hook

from engine_toy import TESTS_DIR, write_toy_config
from mmllava.engine.loops import _ensure_training

if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


class _EvalAfterIter(Hook):
    """Leaves the model in eval mode after iteration ``at`` (as a careless evaluation hook would)
    and records, per iteration, whether the model trained."""

    def __init__(self, at: int):
        self.at, self.training = at, []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.training.append(runner.model.net[2].training)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            runner.model.eval()


def test_the_loop_puts_a_model_left_in_eval_mode_back_to_training(tmp_path):
    from mmllava.config import load_config
    from mmllava.engine.runner import build_runner, prepare_config

    cfg = load_config(str(write_toy_config(tmp_path, num_samples=16, batch_size=4, max_epochs=1)))
    runner = build_runner(prepare_config(cfg, work_dir=str(tmp_path / 'work')))
    hook = _EvalAfterIter(at=2)
    runner.register_hook(hook, priority='HIGHEST')
    runner.train()
    assert hook.training == [True, True, True, True]


class _Flagged(torch.nn.Module):
    """DeepSpeed's engine: ``train(mode)`` sets only the wrapped module, its own flag stays True."""

    def __init__(self):
        super().__init__()
        self.module = torch.nn.Sequential(torch.nn.Dropout(0.5))
        self.calls = 0

    def train(self, mode=True):
        self.calls += 1
        self.module.train(mode)
        return self


def test_ensure_training_reads_the_wrapped_modules_flag():
    engine = _Flagged()
    _ensure_training(engine)
    assert engine.calls == 0  # already training: no walk over the submodules
    engine.eval()
    assert engine.training and not engine.module.training
    _ensure_training(engine)
    assert engine.module.training and engine.calls == 2


class _SharingStrategy(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        return {'strategy': torch.multiprocessing.get_sharing_strategy(), 'seed': torch.initial_seed(),
                'x': torch.full((3,), float(index))}


@pytest.mark.parametrize('runner', ['Runner', 'FlexibleRunner'])
@pytest.mark.parametrize('num_workers', [1, 2])
def test_runner_workers_share_batches_by_file_name_and_stay_seeded(num_workers, runner):
    """The ``worker_init_fn`` that TrainLoop gives the dataloader config, built by either runner."""
    import mmengine.runner

    from mmllava.engine.loops import with_worker_init

    main_strategy = torch.multiprocessing.get_sharing_strategy()
    dataloader = dict(batch_size=1, num_workers=num_workers, dataset=dict(type=_SharingStrategy),
                      sampler=dict(type='DefaultSampler', shuffle=False), collate_fn=dict(type='default_collate'))
    loader = getattr(mmengine.runner, runner).build_dataloader(with_worker_init(dataloader, seed=7, rank=0), seed=7)
    batches = list(loader)
    assert [b['strategy'][0] for b in batches] == ['file_system', 'file_system']
    # mmengine's seeding still runs first: worker i of rank 0 starts from seed + i
    assert sorted({int(b['seed']) for b in batches}) == [7 + i for i in range(num_workers)]
    assert torch.equal(torch.cat([b['x'] for b in batches]), torch.tensor([[0.] * 3, [1.] * 3]))
    assert torch.multiprocessing.get_sharing_strategy() == main_strategy


def test_a_configs_own_worker_init_and_an_unseeded_run_are_left_alone():
    from mmllava.engine.loops import with_worker_init

    own = dict(num_workers=2, worker_init_fn=dict(type='mine'))
    assert with_worker_init(own, seed=7, rank=0) is own
    unseeded = dict(num_workers=2)
    assert with_worker_init(unseeded, seed=None, rank=0) is unseeded
    quiet = dict(num_workers=2, disable_subprocess_warning=True)
    assert with_worker_init(quiet, seed=7, rank=1) == dict(
        num_workers=2, worker_init_fn=dict(type='mmllava_seeded_worker_init_sharing_by_name', num_workers=2,
                                           rank=1, seed=7, disable_subprocess_warning=True))
