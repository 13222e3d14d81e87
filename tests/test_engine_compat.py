"""The compatibility ledger (``mmllava.engine.compat``) and what replaced the removed patches: the
runner built through its constructor with the built dataset, checked checkpoint loading, schedule
phases on whole iterations, the CPU process group, DeepSpeed's optimizers."""
from __future__ import annotations

import importlib
import json
import math
import sys
from fractions import Fraction
from importlib import metadata
from pathlib import Path

import pytest
import torch

from engine_toy import TESTS_DIR, read_losses, run_train, train_env, write_toy_config
from mmllava.cli import main
from mmllava.engine import compat
from mmllava.errors import MMLLaVAError

if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

REPO = Path(__file__).resolve().parent.parent


def test_the_installed_packages_hold_every_ledger_target_as_written():
    for entry in compat.LEDGER:
        assert compat.check_target(entry) is not None, entry


def test_every_ledger_entry_has_its_section_in_the_doc():
    doc = (REPO / compat.DOC).read_text(encoding='utf-8')
    for entry in compat.LEDGER:
        assert f'\n## {entry.section}\n' in doc
        assert f'`{entry.module}.{entry.name}`' in doc


def _shm_error(problem: str) -> str:
    return (f'deepspeed.comm.torch.build_shm_op {problem}: mmllava patches it as in deepspeed 0.19.8, installed is '
            f'deepspeed {metadata.version("deepspeed")}; see docs/mmengine_compat.md '
            '("DeepSpeed builds its shared-memory all-reduce on CPU")')


def _build_shm_op_with_an_argument(verbose):
    return None


@pytest.mark.parametrize('change, problem', [
    ('removed', 'is gone (moved or removed)'),
    ('new signature', 'has the signature (verbose), not ()'),
])
def test_a_moved_or_changed_patch_target_stops_apply_with_one_line(monkeypatch, change, problem):
    ds_comm_torch = importlib.import_module('deepspeed.comm.torch')
    monkeypatch.setattr(compat, '_APPLIED', False)
    monkeypatch.delenv('MMLLAVA_DS_SHM_COMM', raising=False)
    if change == 'removed':
        monkeypatch.delattr(ds_comm_torch, 'build_shm_op')
    else:
        monkeypatch.setattr(ds_comm_torch, 'build_shm_op', _build_shm_op_with_an_argument)
    with pytest.raises(MMLLaVAError) as error:
        compat.apply()
    assert str(error.value) == _shm_error(problem)
    assert not compat._APPLIED
    if change != 'removed':  # nothing was patched
        assert ds_comm_torch.build_shm_op is _build_shm_op_with_an_argument


def _load_with_a_renamed_argument(model, checkpoint, strict=False, logger=None, revise=None):
    return checkpoint


def test_a_changed_called_function_stops_train_at_start(tmp_path, monkeypatch, capsys):
    """Through the CLI: one error line, exit 1, before the dataset or the model is built."""
    import mmengine.runner.checkpoint

    monkeypatch.setattr(compat, '_APPLIED', False)
    monkeypatch.setattr(mmengine.runner.checkpoint, '_load_checkpoint_to_model', _load_with_a_renamed_argument)
    config = write_toy_config(tmp_path)
    assert main(['train', str(config), '--work-dir', str(tmp_path / 'work')]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('mmllava train: error:')]
    assert errors == [
        "mmllava train: error: mmengine.runner.checkpoint._load_checkpoint_to_model has the signature "
        "(model, checkpoint, strict=False, logger=None, revise=None), not (model, checkpoint, strict=False, "
        "logger=None, revise_keys=[('^module\\\\.', '')]): mmllava calls it as in mmengine 0.10.7, installed is "
        f"mmengine {metadata.version('mmengine')}; see docs/mmengine_compat.md (\"Checkpoint loading\")"]
    assert not (tmp_path / 'work' / 'losses_rank0.json').exists()


# --- schedule phases ----------------------------------------------------------------------------
def test_a_phase_boundary_is_the_chosen_iteration_where_mmengine_alone_lands_one_early():
    """61/7 epochs is iteration 61, but in floats (61 / 7) * 7 = 60.99999999999999 and mmengine's
    int() makes it 60. As an exact fraction of an epoch it stays 61."""
    from mmengine.optim import LinearLR
    from mmengine.registry import PARAM_SCHEDULERS

    from mmllava.engine.schedule import exact_boundaries

    phase = dict(type=LinearLR, start_factor=0.5, by_epoch=True, begin=61 / 7, end=9, convert_to_iter_based=True)
    default_args = lambda: dict(optimizer=torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),  # noqa
                                epoch_length=7)
    alone = PARAM_SCHEDULERS.build(dict(phase), default_args=default_args())
    assert (alone.begin, alone.end) == (60, 63)
    exact = exact_boundaries(phase, 7)
    assert (exact['begin'], exact['end']) == (Fraction(61, 7), Fraction(63, 7))
    built = PARAM_SCHEDULERS.build(exact, default_args=default_args())
    assert (built.begin, built.end) == (61, 63)
    assert phase['begin'] == 61 / 7  # the config's own phase is left as it was


def _expected_lrs(base: float, start_factor: float, warmup_end: int, total: int) -> list[float]:
    """XTuner's schedule in closed form: LinearLR from ``start_factor`` to 1 over iterations
    0..warmup_end-1, then cosine to 0 from ``warmup_end`` (its first iteration keeps the lr) to ``total``."""
    warmup = [base * (start_factor + (1 - start_factor) * i / (warmup_end - 1)) for i in range(warmup_end)]
    span = total - warmup_end
    return warmup + [base * (1 + math.cos(math.pi * (i - warmup_end) / span)) / 2 for i in range(warmup_end, total)]


@pytest.mark.parametrize('deepspeed', [None, 'zero2'])
def test_the_lr_of_every_iteration_follows_the_phases_on_whole_iterations(tmp_path, deepspeed):
    """3 epochs of 7 iterations, warmup_ratio 0.1: the warm-up ends at 0.3 epoch = 2.1 iterations,
    rounded up to iteration 3; the cosine phase runs from 3 to 21. The logged lr of each iteration,
    from the plain runner and from DeepSpeed's strategy (each converts the phases itself)."""
    config = write_toy_config(tmp_path / 'cfg', num_samples=7, batch_size=1, max_epochs=3, save_steps=100)
    work_dir = tmp_path / 'work'
    if deepspeed:
        result = run_train(config, '--work-dir', work_dir, '--seed', 1, '--deepspeed', deepspeed, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        assert main(['train', str(config), '--work-dir', str(work_dir), '--seed', '1']) == 0
    scalars = [json.loads(line) for line in next(work_dir.glob('*/vis_data/scalars.json')).read_text().splitlines()]
    lrs = [s['lr'] for s in scalars if 'lr' in s]
    expected = _expected_lrs(1e-2, 1e-5, 3, 21)
    assert len(lrs) == 21
    # mmengine computes the lr recursively (each step scales the last one) in float64: at most
    # 21 roundings of about 1e-16 each; the scalars file keeps the floats whole. rel=1e-12 is far above.
    assert lrs == pytest.approx(expected, rel=1e-12, abs=1e-18)


# --- the runner, its dataset and its checkpoints --------------------------------------------------
def test_the_dataset_is_built_once_and_before_the_model(tmp_path, monkeypatch):
    import engine_toy

    from mmllava.config import load_config
    from mmllava.engine.runner import build_runner, prepare_config

    built = []
    for cls, name in ((engine_toy.ToyDataset, 'dataset'), (engine_toy.ToyModel, 'model')):
        init = cls.__init__

        def recording(self, *args, _init=init, _name=name, **kwargs):
            built.append(_name)
            _init(self, *args, **kwargs)

        monkeypatch.setattr(cls, '__init__', recording)
    cfg = load_config(str(write_toy_config(tmp_path / 'cfg', num_samples=8, max_epochs=1)))
    runner = build_runner(prepare_config(cfg, work_dir=str(tmp_path / 'work')))
    runner.train()
    assert built == ['dataset', 'model']
    assert isinstance(runner.train_dataloader.dataset, engine_toy.ToyDataset) and len(runner.train_dataloader) == 2
    # the runner's config keeps the dataset's settings (dumped to the work dir), not the object
    assert runner.cfg.train_dataloader.dataset.data_path.endswith('toy.json')

    built.clear()
    cfg.data_path = str(tmp_path / 'missing.json')
    cfg.train_dataloader.dataset.data_path = cfg.data_path
    with pytest.raises(MMLLaVAError, match='data file not found'):
        build_runner(prepare_config(cfg, work_dir=str(tmp_path / 'bad')))
    assert built == ['dataset']


def test_load_from_and_resume_load_through_the_checked_loader(tmp_path, monkeypatch):
    """Both go through ``plain_runner.Runner.load_checkpoint``: mmllava's loader (which notes the
    file it read) and ``load_checkpoint_to_model`` (the weight check), not mmengine's own."""
    from mmllava.engine import plain_runner
    from mmllava.checkpoints import SOURCE_KEY

    config = write_toy_config(tmp_path / 'cfg', num_samples=16, max_epochs=1, save_steps=2)
    first = tmp_path / 'first'
    assert main(['train', str(config), '--work-dir', str(first), '--seed', '1']) == 0
    calls = []
    load = plain_runner.load_checkpoint_to_model

    def spy(model, checkpoint, strict=False, revise_keys=()):
        calls.append((type(model).__name__, checkpoint.get(SOURCE_KEY)))
        return load(model, checkpoint, strict, revise_keys)

    monkeypatch.setattr(plain_runner, 'load_checkpoint_to_model', spy)
    assert main(['train', str(config), '--work-dir', str(tmp_path / 'second'),
                 '--cfg-options', f'load_from={first}/iter_2.pth']) == 0
    assert main(['train', str(config), '--work-dir', str(first), '--resume', str(first / 'iter_2.pth')]) == 0
    assert calls == [('ToyModel', f'{first}/iter_2.pth')] * 2
    # the resumed run trained iterations 3 and 4 again from the checkpoint, as the first run did
    assert [step for step, _ in read_losses(first)] == [1, 2, 3, 4, 3, 4]


# --- DeepSpeed's optimizers and the CPU process group ---------------------------------------------
def test_deepspeed_strategy_builds_and_registers_the_optimizers_deepspeed_still_has(tmp_path, monkeypatch):
    from deepspeed.ops.adam import DeepSpeedCPUAdam, FusedAdam
    from deepspeed.ops.lamb import FusedLamb
    from mmengine.registry import OPTIMIZERS

    from mmllava.engine.deepspeed import ONEBIT_MODULE, DeepSpeedStrategy

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModuleNotFoundError):  # what mmengine's constructor trips on
        importlib.import_module(ONEBIT_MODULE)
    strategy = DeepSpeedStrategy(config={'train_micro_batch_size_per_gpu': 2}, exclude_frozen_parameters=True)
    # mmengine's constructor had set everything before its last step failed
    assert strategy.exclude_frozen_parameters is True
    assert strategy.config == {'train_micro_batch_size_per_gpu': 2, 'gradient_accumulation_steps': 1,
                               'steps_per_print': 10 ** 13}
    assert [OPTIMIZERS.get(name) for name in ('DeepSpeedCPUAdam', 'FusedAdam', 'FusedLamb')] == [
        DeepSpeedCPUAdam, FusedAdam, FusedLamb]


def test_two_plain_processes_on_cpu_match_one_with_the_same_global_batch(tmp_path):
    """torchrun, 2 ranks x batch 2, no DeepSpeed: the gloo group mmllava starts before the runner
    (the config says nccl), DDP on CPU; the losses are the single process's with batch 4."""
    from tolerances import rounding_tolerance

    config = write_toy_config(tmp_path / 'cfg', save_steps=100)
    single, double = tmp_path / 'single', tmp_path / 'double'
    assert main(['train', str(config), '--work-dir', str(single), '--seed', '3',
                 '--cfg-options', 'model.dropout=0.0']) == 0
    result = run_train(config, '--work-dir', double, '--seed', 3, '--cfg-options', 'batch_size=2',
                       'model.dropout=0.0', cwd=tmp_path, env=train_env(NPROC_PER_NODE='2'))
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'no CUDA device: using the gloo backend instead of nccl' in result.stdout + result.stderr
    one, two = read_losses(single), read_losses(double)
    assert [step for step, _ in two] == list(range(1, 13))
    # DDP averages the two half batches' gradients, and the logged loss is averaged over ranks:
    # the toy model's 321-parameter sums in another order, one fp32 rounding of such a sum per step
    for (step, loss), (_, expected) in zip(two, one):
        assert loss == pytest.approx(expected, abs=rounding_tolerance(torch.float32, 8 * 32 + 32 + 32 + 1,
                                                                      abs(expected), sequential=step))
    assert read_losses(double, rank=1) == two
