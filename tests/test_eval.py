"""`mmllava eval`: scoring rules, how samples become prompts, and a run of the real command."""
from __future__ import annotations

import json

import pytest

from mmllava.cli import main
from mmllava.datatools.evaluate import exact_match, match_choice, normalize, predict, score, split_sample
from mmllava.errors import MMLLaVAError


@pytest.mark.parametrize('prediction, gold, right', [
    ('square', 'square', True),
    ('Square.', 'square', True),
    ('  RED  ', 'red', True),
    ('red square on the left', 'red', True),  # first word of a one-word gold answer
    ('a red square', 'red', False),
    ('on the left', 'on the left', True),
    ('on the left side', 'on the left', False),
    ('广东。', '广东', True),
])
def test_exact_match(prediction, gold, right):
    assert exact_match(prediction, gold) is right


@pytest.mark.parametrize('prediction, index', [
    ('广东，图中的菜是白切鸡', 1),  # the trained answer form: choice first
    ('广东', 1),
    ('这是山东菜，不是广东菜', 2),  # the first mentioned choice
    ('B', 1),
    ('C. 山东', 2),  # the choice text wins over the letter
    ('D) something', 3),
    ('不知道', None),
])
def test_match_choice(prediction, index):
    assert match_choice(prediction, ['四川', '广东', '山东', '江苏']) == index


def test_score_picks_multiple_choice_when_choices_are_given():
    sample = {'conversations': [{'from': 'human', 'value': 'q\n<image>'}, {'from': 'gpt', 'value': '广东，x'}],
              'choices': ['四川', '广东'], 'answer': 1}
    assert score(sample, '广东') == (True, {'choice': 1, 'answer': 1})
    assert score({k: v for k, v in sample.items() if k != 'choices'}, '广东') == (False, {'gold': '广东，x'})
    assert normalize(' A  b. ') == 'a b'


class FakeSession:
    """Records what ``predict`` hands to a ChatSession."""

    class chat_model:  # noqa: N801 - mimics the attribute
        @staticmethod
        def pixel_values(image):
            return ('pixels', image.size)

    def __init__(self):
        self.system, self.turns, self.images = 'stale', ['stale'], ['stale']

    def reset(self):
        self.turns, self.images = [], []

    def ask(self, text, image=None):
        self.asked = (text, None if image is None else image.size)
        return 'answer'


def test_predict_puts_history_system_and_image_where_training_had_them(tmp_path):
    from PIL import Image

    Image.new('RGB', (8, 6)).save(tmp_path / 'a.png')
    sample = {'image': 'a.png', 'conversations': [
        {'from': 'system', 'value': 'Be brief.'}, {'from': 'human', 'value': 'What shape?\n<image>'},
        {'from': 'gpt', 'value': 'square'}, {'from': 'human', 'value': 'What colour?'}, {'from': 'gpt', 'value': 'red'}]}
    assert split_sample(sample) == ('Be brief.', ['What shape?', 'square', 'What colour?'], 'red')
    session = FakeSession()
    assert predict(session, sample, tmp_path, system='ignored: the sample has its own') == 'answer'
    assert session.system == 'Be brief.'
    assert session.turns == ['<image>\nWhat shape?', 'square'] and session.images == [('pixels', (8, 6))]
    assert session.asked == ('What colour?', None)
    single = {'image': 'a.png', 'conversations': sample['conversations'][1:3]}
    predict(session, single, tmp_path, system='S')
    assert session.system == 'S' and session.turns == [] and session.asked == ('What shape?', (8, 6))


def test_eval_command_writes_predictions_and_accuracy(tiny_zoo, tmp_path, capsys):
    from mmllava.chat.loader import load_chat_model
    from mmllava.chat.session import ChatSession, GenerationSettings

    samples = [
        {'id': 's0', 'conversations': [{'from': 'human', 'value': 'Say hi.'}, {'from': 'gpt', 'value': 'hi'}]},
        {'id': 's1', 'conversations': [{'from': 'human', 'value': 'Pick one.'}, {'from': 'gpt', 'value': 'x'}],
         'choices': ['cat', 'dog'], 'answer': 0},
        {'id': 's2', 'conversations': [{'from': 'human', 'value': 'Unused.'}, {'from': 'gpt', 'value': 'x'}]},
    ]
    data, out = tmp_path / 'data.json', tmp_path / 'pred.jsonl'
    data.write_text(json.dumps(samples))
    llm = str(tiny_zoo['internlm2_chat'])
    assert main(['eval', llm, '--prompt-template', 'internlm2_chat', '--data', str(data), '--out', str(out),
                 '--limit', '2', '--max-new-tokens', '4']) == 0
    session = ChatSession(load_chat_model(llm, prompt_template='internlm2_chat'),
                          settings=GenerationSettings(max_new_tokens=4, temperature=0))
    expected = [session.ask('Say hi.')]
    session.reset()
    expected.append(session.ask('Pick one.'))
    right = [exact_match(expected[0], 'hi'), match_choice(expected[1], ['cat', 'dog']) == 0]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records == [
        {'index': 0, 'id': 's0', 'prediction': expected[0], 'gold': 'hi', 'correct': right[0]},
        {'index': 1, 'id': 's1', 'prediction': expected[1], 'choice': match_choice(expected[1], ['cat', 'dog']),
         'answer': 0, 'correct': right[1]},
    ]
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2:] == [f'mixed accuracy: {sum(right)}/2 = {sum(right) / 2:.4f}', f'predictions: {out}']


def test_eval_needs_checkpoint_for_a_config(tmp_path, capsys):
    data = tmp_path / 'd.json'
    data.write_text('[]')
    assert main(['eval', 'llava_tiny_internlm2_chat_clip_pretrain', '--data', str(data)]) == 1
    assert capsys.readouterr().err == ('mmllava eval: error: llava_tiny_internlm2_chat_clip_pretrain: not a model '
                                       'folder (to evaluate a training config, add --checkpoint PTH)\n')


def _image_data(root, image_dir: str):
    """``root/data.json`` with one sample whose image ``a.png`` is in ``root/image_dir``."""
    from PIL import Image

    (root / image_dir).mkdir(parents=True, exist_ok=True)
    Image.new('RGB', (8, 6)).save(root / image_dir / 'a.png')
    data = root / 'data.json'
    data.write_text(json.dumps([{'image': 'a.png', 'conversations': [
        {'from': 'human', 'value': '<image>\nWhat shape?'}, {'from': 'gpt', 'value': 'square'}]}]))
    return data


@pytest.mark.parametrize('image_dir', ['.', 'images'])
def test_eval_reads_images_beside_the_data_file_by_default(tmp_path, monkeypatch, image_dir):
    """``mmllava eval EXPORT --data data/synthetic/eval.json`` from anywhere: the paths resolve in the
    data file's folder or its images/ (the shipped layout), not in the current folder."""
    from mmllava.datatools.evaluate import evaluate

    data = _image_data(tmp_path / 'data', image_dir)
    (tmp_path / 'elsewhere').mkdir()
    monkeypatch.chdir(tmp_path / 'elsewhere')
    session = FakeSession()
    result = evaluate(session, data)
    assert result['image_folder'] == (data.parent / image_dir if image_dir != '.' else data.parent)
    assert session.asked == ('What shape?', (8, 6))
    monkeypatch.chdir(data.parent / image_dir)  # resolving in the current folder keeps it
    assert evaluate(FakeSession(), data)['image_folder'] is None


def test_missing_eval_image_names_the_path_tried_and_image_folder(tmp_path, monkeypatch):
    from mmllava.datatools.evaluate import evaluate

    data = _image_data(tmp_path / 'data', 'images')
    (data.parent / 'images' / 'a.png').unlink()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MMLLaVAError) as error:
        evaluate(FakeSession(), data)
    assert str(error.value) == (f"{data}:0: image file not found: {tmp_path}/a.png (read relative to the current "
                                f"folder {tmp_path}; pass --image-folder DIR, the folder the data file's image "
                                'paths are relative to)')
    with pytest.raises(MMLLaVAError) as error:
        evaluate(FakeSession(), data, image_folder=tmp_path / 'pics')
    assert str(error.value) == (f'{data}:0: image file not found: {tmp_path}/pics/a.png '
                                f'(read relative to --image-folder {tmp_path}/pics)')
