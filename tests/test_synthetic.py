"""Synthetic shapes data: deterministic bytes, and every answer readable from the pixels."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmllava.errors import MMLLaVAError
from mmllava.tiny.synthetic import MIN_SHAPE, QUESTIONS, build_synthetic_data
from mmllava.tiny.vocabulary import COLORS, COUNTS, POSITIONS, SHAPES, corpus

REPO = Path(__file__).resolve().parent.parent
COMMITTED = REPO / 'data' / 'synthetic'


@pytest.fixture(scope='module')
def small(tmp_path_factory):
    return build_synthetic_data(tmp_path_factory.mktemp('shapes'), seed=3, num_train=36, num_eval=12)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def _load(path):
    return json.loads(Path(path).read_text())


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = build_synthetic_data(tmp_path / 'a', seed=5, num_train=12, num_eval=4)
    build_synthetic_data(tmp_path / 'b', seed=5, num_train=12, num_eval=4)
    build_synthetic_data(tmp_path / 'c', seed=6, num_train=12, num_eval=4)
    assert set(first) == {'pretrain', 'finetune', 'eval', 'image_folder'}
    assert _files(tmp_path / 'a') == _files(tmp_path / 'b')
    assert _files(tmp_path / 'a') != _files(tmp_path / 'c')


def test_committed_copy_is_the_generator_output(tmp_path):
    build_synthetic_data(tmp_path, seed=0)
    assert _files(tmp_path) == _files(COMMITTED)
    assert len(list((COMMITTED / 'images').glob('*.png'))) == 240 + 48
    assert sum(len(b) for b in _files(COMMITTED).values()) < 600_000


def test_tool_runs_from_any_directory(tmp_path):
    out = tmp_path / 'out'
    proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'make_synthetic_data.py'), str(out),
                           '--seed', '1', '--num-train', '4', '--num-eval', '2'],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(_load(out / 'eval.json')) == 2 and len(list((out / 'images').iterdir())) == 6


def _read_pixels(path):
    """What the image shows, measured: colour, side, count and shape of the non-background pixels."""
    pixels = np.asarray(Image.open(path).convert('RGB'))
    background = tuple(int(v) for v in pixels[0, 0])
    mask = np.any(pixels != background, axis=-1)
    colors = Counter(tuple(int(v) for v in p) for p in pixels[mask])
    (dominant, _), = colors.most_common(1)
    columns = np.nonzero(mask.any(axis=0))[0]
    rows = mask.any(axis=1)
    bands = int(rows[0]) + int(np.sum(rows[1:] & ~rows[:-1]))  # runs of rows holding a shape
    # Fill ratio of the first shape's bounding box: square 1, circle ~0.79, triangle ~0.5.
    top = int(np.argmax(rows))
    bottom = top + int(np.argmin(rows[top:])) if not rows[top:].all() else len(rows)
    shape_rows = mask[top:bottom]
    cols = np.nonzero(shape_rows.any(axis=0))[0]
    box = shape_rows[:, cols.min():cols.max() + 1]
    return {'color': dominant, 'columns': (columns.min(), columns.max()), 'count': bands,
            'fill': box.mean(), 'size': min(box.shape)}


def _shape_from_fill(fill: float) -> str:
    return 'square' if fill > 0.95 else 'circle' if fill > 0.65 else 'triangle'


def test_answers_match_pixels(small):
    folder = small['image_folder']
    seen = {'color': set(), 'shape': set(), 'count': set(), 'side': set()}
    for sample in _load(small['finetune']) + _load(small['eval']):
        if 'image' not in sample:
            continue
        measured = _read_pixels(folder / sample['image'])
        assert measured['size'] >= MIN_SHAPE
        turns = sample['conversations']
        for question, answer in zip(turns[::2], turns[1::2]):
            kind = next(k for k, q in QUESTIONS.items() if question['value'].endswith(q))
            answer = answer['value']
            seen[kind].add(answer)
            if kind == 'color':
                assert measured['color'] == COLORS[answer]
            elif kind == 'side':
                low, high = measured['columns']
                assert (high < 32) if answer == 'left' else (low >= 32)
            elif kind == 'count':
                assert COUNTS[measured['count'] - 1] == answer
            else:
                assert _shape_from_fill(measured['fill']) == answer
    assert seen['shape'] <= set(SHAPES) and seen['side'] <= set(POSITIONS) and len(seen['color']) > 3


def test_json_layout(small):
    pretrain, finetune, evaluation = (_load(small[k]) for k in ('pretrain', 'finetune', 'eval'))
    assert len(pretrain) == 36 and len(evaluation) == 12
    sentences = ' '.join(corpus())
    for sample in pretrain:
        human, gpt = sample['conversations']
        assert human == {'from': 'human', 'value': '<image>\n'}
        assert gpt['value'] in sentences  # "two red circles on the left."
    image_samples = [s for s in finetune if 'image' in s]
    text_only = [s for s in finetune if 'image' not in s]
    assert len(image_samples) == 36 and len(text_only) == 3
    for sample in image_samples:
        turns = sample['conversations']
        assert 4 <= len(turns) <= 6 and turns[0]['value'].startswith('<image>\n')
        assert sum(t['value'].count('<image>') for t in turns) == 1
    for sample in text_only + image_samples + evaluation:
        for question, answer in zip(sample['conversations'][::2], sample['conversations'][1::2]):
            assert question['value'].replace('<image>\n', '').split('. ')[-1] in QUESTIONS.values()
            assert answer['value'] in set(COLORS) | set(SHAPES) | set(COUNTS) | set(POSITIONS)
    assert all(len(s['conversations']) == 2 for s in evaluation)
    assert not {s['image'] for s in evaluation} & {s['image'] for s in image_samples}


def test_kinds_are_configurable(tmp_path):
    paths = build_synthetic_data(tmp_path, seed=0, num_train=6, num_eval=4, kinds=('color', 'side'))
    questions = {t['value'].replace('<image>\n', '') for s in _load(paths['eval']) + _load(paths['finetune'])
                 if 'image' in s for t in s['conversations'][::2]}
    assert questions == {QUESTIONS['color'], QUESTIONS['side']}
    with pytest.raises(MMLLaVAError, match='valid kinds: color, shape, count, side'):
        build_synthetic_data(tmp_path, kinds=('size',))
