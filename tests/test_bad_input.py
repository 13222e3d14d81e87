"""Bad input through the real commands: every kind gives one exact error line, exit code 1 and no
traceback, from `check-dataset` (which lists it) and from `train` (which stops before the first
step). Train runs in-process (the runner's imports are paid once); one case per verb also goes
through a subprocess of the installed CLI."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image

from mmllava.cli import main
from mmllava.errors import MMLLaVAError

CONFIG = 'llava_tiny_internlm2_chat_qlora_clip_finetune'
SHAPES = Path(__file__).resolve().parent.parent / 'data' / 'synthetic' / 'images'
QUESTION = {'from': 'human', 'value': '<image>\nWhat shape is it?'}
GOOD = {'image': 'good.png', 'conversations': [QUESTION, {'from': 'gpt', 'value': 'square'}]}
TEXT = {'conversations': [{'from': 'human', 'value': 'Say hi.'}, {'from': 'gpt', 'value': 'hi'}]}
ROLES = '(roles must alternate human/gpt, starting with human)'
# A shipped config is never edited in place: the hint offers --cfg-options or a copy.
CHANGE = 'set --cfg-options {key}=..., or edit {key} in a copy: mmllava copy-cfg ' + CONFIG + ' .'


def _with(**fields):
    return {**GOOD, **fields}


@dataclass
class Case:
    """``data``: samples (written as JSON), or raw file text; ``{images}`` / ``{cfg}`` / ``{data}`` in the
    expected lines are filled in. ``train=None``: training does not fail on it (check-dataset does)."""

    id: str
    data: list | str
    check: str
    train: str | None = ''  # '' = the same line as check-dataset's error
    name: str = 'data.json'
    options: list = field(default_factory=list)


CASES = [
    Case('malformed_json', '[\n {"conversations": []},\n {"image": "a.png" "conversations": []}\n]',
         "error: {data}:3:20: invalid JSON: Expecting ',' delimiter"),
    Case('jsonl_bad_line', json.dumps(GOOD) + '\n{"conversations": [\n', 'error: {data}:2:20: invalid JSON: Expecting value',
         name='data.jsonl'),
    Case('non_list_top_level', json.dumps({'data': [GOOD]}, indent=1),
         'error: {data}: the top level is an object; expected a JSON list of samples (or JSONL: one sample object a line)'),
    Case('wrong_roles', [GOOD, _with(conversations=[{'from': 'user', 'value': 'q'}, {'from': 'gpt', 'value': 'a'}])],
         f'{{data}}:1: turn 0: expected role "human", got \'user\' {ROLES}'),
    Case('empty_answer', [GOOD, _with(conversations=[QUESTION, {'from': 'gpt', 'value': ' '}])],
         '{data}:1: turn 1: empty gpt answer'),
    Case('missing_image', [GOOD, _with(image='nope.png')], '{data}:1: image file not found: {images}/nope.png'),
    Case('corrupt_image', [GOOD, _with(image='corrupt.png')],
         "{data}:1: {images}/corrupt.png: cannot read image: cannot identify image file '{images}/corrupt.png'"),
    Case('truncated_png', [GOOD, _with(image='truncated.png')],
         '{data}:1: {images}/truncated.png: cannot read image: Truncated File Read',
         train='{data}:1: {images}/truncated.png: cannot read image: image file is truncated'),
    Case('huge_image', [GOOD, _with(image='huge.png')],
         '{data}:1: {images}/huge.png: image of 10000x9000 pixels exceeds max_pixels=89478485'),
    Case('placeholder_without_image', [GOOD, {'conversations': [QUESTION, {'from': 'gpt', 'value': 'a'}]}],
         '{data}:1: 1 <image> placeholder(s) but the sample has no "image"'),
    Case('two_placeholders', [GOOD, _with(conversations=[{'from': 'human', 'value': '<image><image>q'},
                                                         {'from': 'gpt', 'value': 'a'}])],
         '{data}:1: 2 <image> placeholders for 1 image'),
    Case('two_images', [GOOD, _with(image=['good.png', 'good.png'])],
         '{data}:1: 2 images in one sample; only 0 or 1 are supported'),
    Case('path_escapes_image_folder', [GOOD, _with(image='../outside.png')],
         "{data}:1: image path '../outside.png' leaves the image folder {images}"),
    Case('no_trained_token_after_truncation', [TEXT, GOOD],
         '{data}:1: no trained tokens after truncation to max_length=70: the first turn alone needs 81 tokens',
         options=['max_length=70']),
    Case('over_long_sample_loses_turns', [GOOD, _with(conversations=GOOD['conversations'] + TEXT['conversations'] * 3)],
         '{data}:1: 133 tokens > max_length=100: trailing turns are dropped', train=None, options=['max_length=100']),
    Case('unknown_template', [GOOD], "error: unknown prompt template 'nope'; valid names: "
         'internlm2_chat, llama3_chat, qwen_chat, vicuna, plain', options=['prompt_template=nope']),
    Case('missing_llm_path', [GOOD], 'error: tokenizer: /nonexistent/llm does not exist ('
         + CHANGE.format(key='llm_name_or_path') + ')', options=['llm_name_or_path=/nonexistent/llm']),
    Case('missing_data_file', [GOOD], 'error: data file not found: missing.json (looked for {root}/missing.json: '
         'relative paths are taken from the current folder; ' + CHANGE.format(key='data_path') + ')',
         options=['data_path=missing.json']),
    # a missing path in each kind of setting: named, with where it was looked for and how to change it
    Case('missing_vision_path', [GOOD], 'error: image_processor: clip does not exist (looked for {root}/clip: '
         'relative paths are taken from the current folder; ' + CHANGE.format(key='visual_encoder_name_or_path') + ')',
         options=['visual_encoder_name_or_path=clip']),
    Case('missing_image_folder', [GOOD], 'error: image_folder: pictures does not exist (looked for {root}/pictures: '
         'relative paths are taken from the current folder; ' + CHANGE.format(key='image_folder') + ')',
         options=['image_folder=pictures']),
    Case('bad_config_key', [GOOD], "error: {cfg}: --cfg-options max_lenght: the config has no variable named 'max_lenght'",
         options=['max_lenght=10']),
    Case('bad_config_type', [GOOD], "error: max_length: expected a positive integer, got 'long' ("
         + CHANGE.format(key='max_length') + ')', options=['max_length=long']),
]


@pytest.fixture(scope='module')
def workspace(tmp_path_factory, tiny_zoo):
    """A folder laid out like a user's: ``images`` with good and bad files (the tiny models come
    from the zoo the shipped config names)."""
    root = tmp_path_factory.mktemp('bad_input')
    images = root / 'images'
    images.mkdir()
    shutil.copy(SHAPES / 'train_0000.png', images / 'good.png')
    shutil.copy(SHAPES / 'train_0000.png', root / 'outside.png')
    (images / 'corrupt.png').write_bytes(b'this is not an image')
    (images / 'truncated.png').write_bytes((SHAPES / 'train_0000.png').read_bytes()[:100])
    Image.new('1', (10000, 9000)).save(images / 'huge.png')  # 90 Mpx, a few kB on disk
    return root


def _arguments(verb: str, case: Case, root: Path) -> list[str]:
    data = case.data if isinstance(case.data, str) else json.dumps(case.data)
    (root / case.name).write_text(data, encoding='utf-8')
    options = ['pretrained_pth=None', f'data_path={case.name}', 'image_folder=images', *case.options]
    if verb == 'train':
        # LoRA instead of QLoRA: the bad-input paths are the same, the model builds faster.
        return ['train', CONFIG, '--work-dir', str(root / 'work' / case.id), '--cfg-options', *options,
                'model.llm.quantization_config=None', 'evaluation_images=images/good.png',
                'evaluation_inputs=[]']
    return ['check-dataset', CONFIG, '--cfg-options', *options]


def _expected(line: str, case: Case, root: Path) -> str:
    from mmllava.config_source import find_config

    return line.format(data=case.name, images=root / 'images', cfg=find_config(CONFIG), root=root)


def _assert_reported(verb: str, expected: str, code: int, out: str, err: str) -> None:
    assert 'Traceback' not in out + err, (out + err)[-3000:]
    assert code == 1, (out + err)[-3000:]
    if expected.startswith('error: '):  # a fatal error: the CLI's one line on stderr
        errors = [line for line in err.splitlines() if line.startswith(f'mmllava {verb}: error: ')]
        assert errors == [f'mmllava {verb}: {expected}'], err[-3000:]
    elif verb == 'train':  # train stops on the first bad sample with it as its error
        errors = [line for line in err.splitlines() if line.startswith('mmllava train: error: ')]
        assert len(errors) == 1 and errors[0].startswith(f'mmllava train: error: {expected}'), err[-3000:]
    else:  # check-dataset lists the sample among its findings
        assert expected in out.splitlines(), out


@pytest.mark.parametrize('case', CASES, ids=[case.id for case in CASES])
def test_check_dataset_reports(case, workspace, monkeypatch, capfd):
    monkeypatch.chdir(workspace)
    code = main(_arguments('check-dataset', case, workspace))
    out, err = capfd.readouterr()
    _assert_reported('check-dataset', _expected(case.check, case, workspace), code, out, err)


TRAIN_CASES = [case for case in CASES if case.train is not None]
# settings only training reads: evaluation_images (EvaluateChatHook), load_from (the runner)
TRAIN_ONLY_SETTINGS = [
    ('evaluation_images=nope.png', 'image file not found: nope.png (looked for {root}/nope.png: relative paths are '
     'taken from the current folder; ' + CHANGE.format(key='evaluation_images') + ')'),
    ("evaluation_images=['images/good.png','nope.png']", 'image file not found: nope.png (looked for {root}/nope.png: '
     'relative paths are taken from the current folder; ' + CHANGE.format(key='evaluation_images') + ')'),
    ('load_from=old/iter_1.pth', 'checkpoint not found: old/iter_1.pth (looked for {root}/old/iter_1.pth: relative '
     'paths are taken from the current folder; ' + CHANGE.format(key='load_from') + ')'),
]


@pytest.mark.parametrize('case', TRAIN_CASES, ids=[case.id for case in TRAIN_CASES])
def test_train_stops_before_the_first_step(case, workspace, monkeypatch, capfd):
    from mmengine.logging import MMLogger

    monkeypatch.chdir(workspace)
    # mmengine's current logger writes to the stream of the test that created it: start a new one.
    MMLogger.get_instance(f'test_bad_input_{case.id}')
    code = main(_arguments('train', case, workspace))
    out, err = capfd.readouterr()
    _assert_reported('train', _expected(case.train or case.check, case, workspace), code, out, err)
    assert not list((workspace / 'work' / case.id).glob('iter_*.pth'))


@pytest.mark.parametrize('option, expected', TRAIN_ONLY_SETTINGS, ids=['evaluation_image', 'evaluation_images_list',
                                                                      'load_from'])
def test_train_names_a_missing_path_in_a_setting_only_training_reads(option, expected, workspace, monkeypatch, capfd):
    from mmengine.logging import MMLogger

    monkeypatch.chdir(workspace)
    MMLogger.get_instance(f'test_bad_input_{option}')
    case = Case(option.split('=')[0], [GOOD], '')
    code = main(_arguments('train', case, workspace) + ["evaluation_inputs=['hi']", option])
    out, err = capfd.readouterr()
    _assert_reported('train', 'error: ' + expected.format(root=workspace), code, out, err)


@pytest.mark.parametrize('verb', ['check-dataset', 'train'])
def test_the_installed_cli_reports_one_line(verb, workspace):
    case = next(case for case in CASES if case.id == 'wrong_roles')
    result = subprocess.run([sys.executable, '-m', 'mmllava', *_arguments(verb, case, workspace)], cwd=workspace,
                            capture_output=True, text=True, timeout=300)
    _assert_reported(verb, _expected(case.check, case, workspace), result.returncode, result.stdout, result.stderr)


def test_skip_bad_samples_trains_on_the_rest_and_says_what_it_skipped(workspace, monkeypatch, capfd):
    from mmengine.logging import MMLogger

    monkeypatch.chdir(workspace)
    MMLogger.get_instance('test_bad_input_skip')
    case = Case('skip', [GOOD, _with(image='nope.png'), TEXT, _with(conversations=[QUESTION])], '',
                options=['train_dataloader.dataset.skip_bad_samples=True', 'max_epochs=1'])
    assert main(_arguments('train', case, workspace)) == 0
    out, err = capfd.readouterr()
    line = ('data.json: skipped 2 of 4 samples (skip_bad_samples=True): 1 x [image file not found: '
            f'{workspace}/images/nope.png] (first at index 1); 1 x [turn 0: the conversation ends with a human '
            'turn that has no gpt answer] (first at index 3)')
    assert line in out + err
    log = next((workspace / 'work' / 'skip').glob('*/*.log')).read_text()
    assert line in log and 'training dataset: 2 samples' in log


@pytest.mark.parametrize('packed', [False, True], ids=['samples', 'packs'])
def test_a_bad_image_in_a_dataloader_worker_is_its_one_line_error(packed, workspace, monkeypatch):
    """The worker sends the error as the batch (mmllava/data/worker.py): the main process raises
    the dataset's own ``MMLLaVAError``, not torch's report of it, and the next batches still come."""
    from functools import partial

    from mmllava.config import load_config, parse_cfg_options
    from mmllava.data.collate import llava_collate
    from mmllava.data.packing import PackedDataset
    from mmllava.datatools.inspect import build_training_dataset

    monkeypatch.chdir(workspace)
    (workspace / 'worker.json').write_text(json.dumps([GOOD, _with(image='truncated.png'), GOOD]), encoding='utf-8')
    cfg = load_config(CONFIG, parse_cfg_options(['pretrained_pth=None', 'data_path=worker.json',
                                                 'image_folder=images']))
    dataset = build_training_dataset(cfg)
    if packed:  # one sample a pack: the bad sample's pack is the second batch
        dataset = PackedDataset(dataset, max_tokens=dataset.max_length)
        dataset.packs = [[0], [1], [2]]
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=1,
                                         collate_fn=partial(llava_collate, pad_token_id=0))
    batches = iter(loader)
    assert next(batches)['data']['pixel_values'] is not None
    with pytest.raises(MMLLaVAError) as caught:
        next(batches)
    assert type(caught.value) is MMLLaVAError
    assert str(caught.value) == (f'worker.json:1: {workspace}/images/truncated.png: cannot read image: '
                                 'image file is truncated')
    assert next(batches)['data']['pixel_values'] is not None  # the third sample, after the bad one


def test_every_collate_passes_a_failed_sample_on_as_the_batch():
    from mmllava.data.collate import llava_collate
    from mmllava.data.internvl_dataset import internvl_collate
    from mmllava.data.worker import FailedSample

    item = {'input_ids': [1, 2], 'labels': [1, 2], 'pixel_values': None}
    failed = FailedSample(MMLLaVAError('data.json:1: broken'))
    assert llava_collate([item, failed]) is failed and internvl_collate([failed, item]) is failed
    with pytest.raises(MMLLaVAError, match='^data.json:1: broken$'):
        failed.reraise()
