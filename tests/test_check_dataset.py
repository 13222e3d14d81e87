"""`check-dataset` on good data (counts, token lengths, exit 0) and `log-dataset`'s exact views."""
from __future__ import annotations

from pathlib import Path

import pytest

from mmllava.cli import main

REPO = Path(__file__).resolve().parent.parent
FINETUNE = 'llava_tiny_internlm2_chat_qlora_clip_finetune'


@pytest.fixture
def workspace(tmp_path, tiny_zoo, monkeypatch):
    """An empty folder: the shipped tiny configs find the tiny models and the synthetic data in
    mmllava's cache folder from anywhere."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope='module')
def synthetic():
    from mmllava.tiny.cache import synthetic_data_path

    return synthetic_data_path()


def test_check_dataset_passes_the_shipped_data(workspace, synthetic, capsys):
    assert main(['check-dataset', FINETUNE]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f'data: {synthetic}/finetune.json',
        'samples: 260 (with image: 240, text-only: 20), turns: 1252',
        'tokens: min 24, median 101, p95 118, max 118; 0 longer than max_length=256',
        'problems: 0',
        'result: OK',
    ]


def test_check_dataset_counts_every_problem_not_just_the_first(workspace, synthetic, capsys, tmp_path):
    import json

    samples = json.loads((REPO / 'data/synthetic/finetune.json').read_text())[:3]
    samples[0]['image'] = 'missing.png'
    samples[2]['conversations'][1]['value'] = ''
    (tmp_path / 'two_bad.json').write_text(json.dumps(samples))
    assert main(['check-dataset', FINETUNE, '--cfg-options', 'data_path=two_bad.json', 'max_length=110']) == 1
    images = synthetic / 'images'
    assert capsys.readouterr().out.splitlines() == [
        'data: two_bad.json',
        'samples: 3 (with image: 3, text-only: 0), turns: 18',
        'tokens: min 118, median 118, p95 118, max 118; 1 longer than max_length=110',
        'problems: 2 (missing image: 1, invalid sample: 1)',
        f'two_bad.json:0: image file not found: {images}/missing.png',
        'two_bad.json:2: turn 1: empty gpt answer',
        'two_bad.json:1: 118 tokens > max_length=110: trailing turns are dropped',
        'result: training stops at the first bad sample; with skip_bad_samples=True it skips 2 of 3',
    ]


def test_check_dataset_counts_problems_by_the_type_of_error_each_sample_raised(workspace, synthetic, capsys):
    """The kinds come from the error types the dataset raises (mmllava.errors), not from its wording."""
    import json
    import shutil

    (workspace / 'images').mkdir()
    shutil.copy(synthetic / 'images' / 'train_0000.png', workspace / 'images' / 'good.png')
    (workspace / 'images' / 'corrupt.png').write_bytes(b'not an image')
    answer = {'from': 'gpt', 'value': 'a'}
    samples = [{'image': name, 'conversations': [{'from': 'human', 'value': question}, answer]}
               for name, question in [('good.png', 'q'), ('missing.png', 'q'), ('corrupt.png', 'q'),
                                      ('good.png', '<image><image>q')]]
    samples += [{'conversations': [{'from': 'human', 'value': 'word ' * 300}, answer]},
                {'conversations': [{'from': 'human', 'value': 'q'}, {'from': 'gpt', 'value': ''}]}]
    (workspace / 'kinds.json').write_text(json.dumps(samples))
    assert main(['check-dataset', FINETUNE, '--cfg-options', 'data_path=kinds.json', 'image_folder=images']) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[3] == ('problems: 5 (missing image: 1, unreadable image: 1, placeholder/image mismatch: 1, '
                      'no trained token after truncation: 1, invalid sample: 1)')


def test_log_dataset_shows_what_the_model_sees(workspace, synthetic, capsys):
    assert main(['log-dataset', FINETUNE, '--show', 'all']) == 0
    assert capsys.readouterr().out == f'''\
=== {synthetic}/finetune.json:0: 116 tokens, 6 trained, image train_0000.png ===
--- text ---
<s><|im_start|>user
<image x 64>
What shape is it?<|im_end|>
<|im_start|>assistant
square<|im_end|>
<|im_start|>user
How many shapes are there?<|im_end|>
<|im_start|>assistant
one<|im_end|>
<|im_start|>user
What color is the shape?<|im_end|>
<|im_start|>assistant
yellow<|im_end|>

--- masked_text ---
[-100 x 4]<image x 64>[-100 x 11]square<|im_end|>[-100 x 15]one<|im_end|>[-100 x 15]yellow<|im_end|>[-100 x 1]
--- input_ids ---
[1, 599, 407, 13, -200 x 64, 13, 447, 343, 271, 445, 567, 598, 13, 599, 480, 13, 418, 598, 13, 599, 407, 13, \
389, 460, 374, 291, 472, 567, 598, 13, 599, 480, 13, 333, 598, 13, 599, 407, 13, 447, 421, 271, 265, 343, 567, \
598, 13, 599, 480, 13, 469, 598, 13]
--- labels ---
[-100 x 79, 418, 598, -100 x 15, 333, 598, -100 x 15, 469, 598, -100 x 1]
'''


def test_log_dataset_one_view_several_samples(workspace, synthetic, capsys):
    assert main(['log-dataset', 'llava_tiny_internlm2_chat_clip_pretrain', '--show', 'masked_text', '-n', '2']) == 0
    assert capsys.readouterr().out == f'''\
=== {synthetic}/pretrain.json:0: 82 tokens, 8 trained, image train_0000.png ===
--- masked_text ---
[-100 x 4]<image x 64>[-100 x 5]one yellow square on the right.<|im_end|>[-100 x 1]
=== {synthetic}/pretrain.json:1: 82 tokens, 8 trained, image train_0001.png ===
--- masked_text ---
[-100 x 4]<image x 64>[-100 x 5]one blue circle on the right.<|im_end|>[-100 x 1]
'''
