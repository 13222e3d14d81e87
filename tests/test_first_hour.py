"""A new user's first hour: the embedded default from an empty folder, what `train` prints, and the
one-line errors met on the way (missing extra, missing pretrain checkpoint, config typo, failed run)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmllava.cli import main

REPO = Path(__file__).resolve().parent.parent
PRETRAIN = 'llava_tiny_internlm2_chat_clip_pretrain'


def test_tiny_train_from_an_empty_folder_builds_the_default_and_prints_a_short_log(tmp_path):
    """A plain install in an empty folder: the tiny models and the synthetic data are built into the
    cache folder; the terminal gets the header, progress, chat results and checkpoints, no warning;
    the log file keeps mmengine's config dump and hook table."""
    folder, cache = tmp_path / 'empty', tmp_path / 'cache'
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k != 'MMLLAVA_TINY_ZOO'}
    env.update(MMLLAVA_CACHE=str(cache), PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, '-m', 'mmllava', 'train', PRETRAIN, '--cfg-options', 'max_epochs=1'],
                            cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    lines = output.splitlines()
    work_dir = folder / 'work_dirs' / PRETRAIN
    assert (work_dir / 'iter_30.pth').is_file()
    from mmllava.tiny.cache import synthetic_data_path, tiny_model_path

    with pytest.MonkeyPatch.context() as env_patch:  # the folders this process would name for that cache
        env_patch.setenv('MMLLAVA_CACHE', str(cache))
        env_patch.delenv('MMLLAVA_TINY_ZOO', raising=False)
        data, models = synthetic_data_path(), tiny_model_path('clip_vit').parent
    assert sorted(p.name for p in cache.iterdir()) == sorted([data.name, models.name])
    assert sorted(p.name for p in models.iterdir()) == ['clip_vit', 'internlm2_chat']
    # 5 header lines, 2 x 2 chat lines, 3 progress lines, the checkpoint lines: 20 is the budget
    assert len(lines) <= 20, output
    assert not [line for line in lines if 'warning' in line.lower()], output
    header = next(i for i, line in enumerate(lines) if line.startswith('config    '))
    assert lines[header] == f'config    {REPO}/mmllava/configs/llava/tiny/{PRETRAIN}.py'
    assert lines[header + 1].startswith(f'work dir  {work_dir}  (full log: {work_dir}/')
    assert any(re.fullmatch(r'model     [\d.]+k trainable / [\d.]+k parameters', line) for line in lines), output
    assert f'data      240 samples ({data}/pretrain.json): 30 batches of 8 per epoch, 30 iterations' \
        in lines
    assert any(re.fullmatch(r'device    cpu, \d+ threads, no DeepSpeed', line) for line in lines), output
    losses = [float(m.group(1)) for m in (re.match(r'iter [ \d]+/30  loss ([\d.]+)  lr \S+  [\d.]+ s/it  '
                                                   r'ETA \S+  mem \d+ MB$', line) for line in lines) if m]
    assert len(losses) == 3 and losses[-1] < losses[0], output
    assert lines[-1] == f'checkpoints in {work_dir}: iter_30.pth'
    log = next(work_dir.glob('*/*.log')).read_text()
    assert 'Config:\n' in log and 'Hooks will be executed in the following order' in log
    assert 'Config:' not in output and 'Hooks will be executed' not in output


def test_the_embedded_data_is_the_committed_synthetic_data():
    """Built from the package (seed 0), the cache's data is byte for byte the data in the repository."""
    from mmllava.tiny.cache import synthetic_data_path

    built = synthetic_data_path()
    committed = REPO / 'data' / 'synthetic'
    for name in ('pretrain.json', 'finetune.json', 'eval.json', 'images/train_0000.png', 'images/eval_0047.png'):
        assert (built / name).read_bytes() == (committed / name).read_bytes(), name


@pytest.mark.parametrize('verb, module', [('serve', 'uvicorn'), ('demo', 'gradio')])
def test_a_missing_extra_is_one_line(verb, module, tmp_path):
    # None in sys.modules makes `import module` fail as if the package were not installed.
    shim = f'import sys; sys.modules[{module!r}] = None; from mmllava.cli import main; sys.exit(main())'
    result = subprocess.run([sys.executable, '-c', shim, verb, str(tmp_path)], capture_output=True, text=True,
                            env={**os.environ, 'PYTHONPATH': str(REPO)}, timeout=120)
    assert (result.returncode, result.stdout) == (1, '')
    assert result.stderr == f"mmllava {verb}: needs the serve extra: pip install 'mmllava[serve]'\n"


@pytest.mark.parametrize('finetune, pretrain', [
    ('llava_tiny_internlm2_chat_qlora_clip_finetune', PRETRAIN),
    ('llava_tiny_qwen2_5_instruct_clip_lora_finetune', 'llava_tiny_qwen2_5_instruct_clip_pretrain'),
])
def test_a_fine_tune_before_its_pretrain_names_the_pretrain_config(finetune, pretrain, tiny_zoo, tmp_path,
                                                                    monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    assert main(['train', finetune]) == 1
    err = capfd.readouterr().err.splitlines()
    assert err[-1] == (f'mmllava train: error: ./work_dirs/{pretrain}: checkpoint not found (looked for '
                       f'{tmp_path}/work_dirs/{pretrain}: relative paths are taken from the current folder; '
                       f'it is written by `mmllava train {pretrain}`: run that here first, or train without it: '
                       '--cfg-options pretrained_pth=None)')
    assert list(tmp_path.iterdir()) == []


def test_a_config_typo_names_the_file_and_line(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    assert main(['copy-cfg', PRETRAIN, 'mine']) == 0
    copy = tmp_path / 'mine' / f'{PRETRAIN}_copy.py'
    assert capfd.readouterr().out == f'Copy to {copy}\n'
    # in the dataset dict of part 3, below the multi-line `model = dict(...)`
    source = copy.read_text().replace('    data_path=data_path,', '    data_path=data_rot,')
    copy.write_text(source)
    line = source.splitlines().index('    data_path=data_rot,') + 1
    expected = f"mmllava train: error: {copy}:{line}: the config failed to load: NameError: name 'data_rot' is not defined"
    assert main(['train', str(copy)]) == 1
    assert capfd.readouterr().err.splitlines() == [expected]
    # Overrides re-write the source before it runs; a multi-line value keeps the lines below in place.
    assert main(['train', str(copy), '--cfg-options', 'max_length=64', 'model=None']) == 1
    assert capfd.readouterr().err.splitlines() == [expected]


def test_a_copied_config_runs_where_it_is_copied_and_hints_edits_in_it(tiny_zoo, tmp_path, monkeypatch, capfd):
    (tmp_path / 'configs').mkdir()
    monkeypatch.chdir(tmp_path / 'configs')
    assert main(['copy-cfg', PRETRAIN, '.']) == 0
    copy = tmp_path / 'configs' / f'{PRETRAIN}_copy.py'
    monkeypatch.chdir(tmp_path)
    capfd.readouterr()
    assert main(['check-dataset', str(copy)]) == 0
    assert capfd.readouterr().out.splitlines()[-1] == 'result: OK'
    assert main(['check-dataset', str(copy), '--cfg-options', 'data_path=mine.json']) == 1
    assert capfd.readouterr().err.splitlines() == [
        f'mmllava check-dataset: error: data file not found: mine.json (looked for {tmp_path}/mine.json: '
        f'relative paths are taken from the current folder; edit data_path in {copy})']


def test_a_run_that_fails_before_its_first_checkpoint_removes_its_folders(tiny_zoo, tmp_path, monkeypatch, capfd):
    from mmengine.logging import MMLogger

    monkeypatch.chdir(tmp_path)
    MMLogger.get_instance('test_first_hour_failed_run')  # a logger on this test's streams
    failing = ['train', PRETRAIN, '--cfg-options', 'evaluation_images=nope.png']
    assert main(failing) == 1
    assert capfd.readouterr().err.splitlines()[-1].startswith('mmllava train: error: image file not found: nope.png')
    assert list(tmp_path.iterdir()) == []  # work_dirs/ was made by the run: all of it goes
    work_dir = tmp_path / 'work_dirs' / PRETRAIN
    work_dir.mkdir(parents=True)
    (work_dir / 'notes.txt').write_text('mine')
    assert main(failing) == 1
    # only the run's timestamped log folder goes; the config dump stays next to the user's file
    assert sorted(p.name for p in work_dir.iterdir()) == [f'{PRETRAIN}.py', 'notes.txt']


def test_verbose_shows_in_the_terminal_what_the_log_file_keeps(tmp_path):
    from engine_toy import run_train, write_toy_config

    config = write_toy_config(tmp_path / 'cfg', max_epochs=1)
    outputs = {}
    for name, flags in (('default', []), ('verbose', ['--verbose'])):
        result = run_train(config, '--work-dir', tmp_path / name, *flags, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[name] = result.stdout + result.stderr
        log = next((tmp_path / name).glob('*/*.log')).read_text()
        assert 'Config:\n' in log and 'Hooks will be executed in the following order' in log
    assert 'Config:' not in outputs['default'] and 'Hooks will be executed' not in outputs['default']
    assert 'Config:\n' in outputs['verbose'] and 'Hooks will be executed in the following order' in outputs['verbose']
    assert 'iter 6/6  loss ' in outputs['default']  # 24 samples / batch 4: the console's progress line
