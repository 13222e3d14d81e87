"""`mmllava data repeat` and `mmllava data foodieqa`: exact output files."""
from __future__ import annotations

import json

import pytest

from mmllava.cli import main

SAMPLE = {'id': 'a', 'image': 'a.png', 'conversations': [{'from': 'human', 'value': '<image>\nq'},
                                                         {'from': 'gpt', 'value': 'x'}]}
OTHER = {'id': 'b', 'conversations': [{'from': 'human', 'value': 'hi'}, {'from': 'gpt', 'value': 'yo'}]}

# Two entries in the shape of FoodieQA's sivqa_tidy.json (invented content, not the data set's).
FOODIE = [
    {'question': '图中的菜是哪个地区的特色美食？', 'choices': ['四川', '广东', '山东', '江苏'], 'answer': '1',
     'food_meta': {'food_file': 'images/abc.jpg', 'food_name': '白切鸡', 'food_location': '广东'},
     'question_type': 'region-2', 'question_id': 'vqa-1'},
    {'question': '这道菜的主要烹饪技法是什么？', 'choices': ['炒', '蒸', '炸', '煮'], 'answer': '3',
     'food_meta': {'food_file': 'images/def.jpg', 'food_name': '水煮鱼', 'food_location': '四川'},
     'question_type': 'cooking-skills', 'question_id': 'vqa-2'},
]
FOODIE_LLAVA = [
    {'image': 'images/abc.jpg', 'conversations': [
        {'from': 'human', 'value': '图中的菜是哪个地区的特色美食？\n<image>'},
        {'from': 'gpt', 'value': '广东，图中的菜是白切鸡'}]},
    {'image': 'images/def.jpg', 'conversations': [
        {'from': 'human', 'value': '这道菜的主要烹饪技法是什么？\n<image>'},
        {'from': 'gpt', 'value': '煮，图中的菜是水煮鱼'}]},
]


@pytest.mark.parametrize('src, dst', [('in.json', 'out.json'), ('in.jsonl', 'out.jsonl'), ('in.json', 'out.jsonl')])
def test_repeat_writes_the_list_n_times(tmp_path, capsys, src, dst):
    lines = [json.dumps(SAMPLE), json.dumps(OTHER)]
    (tmp_path / src).write_text('\n'.join(lines) if src.endswith('.jsonl') else json.dumps([SAMPLE, OTHER]))
    assert main(['data', 'repeat', '-i', str(tmp_path / src), '-o', str(tmp_path / dst), '-n', '3']) == 0
    assert capsys.readouterr().out == f'wrote 6 samples to {tmp_path / dst}\n'
    text = (tmp_path / dst).read_text(encoding='utf-8')
    if dst.endswith('.jsonl'):
        assert text == '\n'.join(lines * 3) + '\n'
    else:
        assert text == json.dumps([SAMPLE, OTHER] * 3, indent=2) + '\n'


def test_repeat_refuses_nonpositive_n(tmp_path, capsys):
    (tmp_path / 'in.json').write_text('[]')
    assert main(['data', 'repeat', '-i', str(tmp_path / 'in.json'), '-o', str(tmp_path / 'o.json'), '-n', '0']) == 1
    assert capsys.readouterr().err == 'mmllava data: error: -n must be at least 1, got 0\n'


def test_foodieqa_matches_the_seed_conversion(tmp_path, capsys):
    (tmp_path / 'sivqa_tidy.json').write_text(json.dumps(FOODIE, ensure_ascii=False), encoding='utf-8')
    out = tmp_path / 'sivqa_llava.json'
    assert main(['data', 'foodieqa', '-i', str(tmp_path / 'sivqa_tidy.json'), '-o', str(out)]) == 0
    assert capsys.readouterr().out == f'wrote 2 samples to {out}\n'
    assert json.loads(out.read_text(encoding='utf-8')) == FOODIE_LLAVA
    assert '白切鸡' in out.read_text(encoding='utf-8')  # readable, not \\u escapes


def test_foodieqa_eval_form_keeps_choices_and_answer(tmp_path):
    (tmp_path / 'in.json').write_text(json.dumps(FOODIE, ensure_ascii=False), encoding='utf-8')
    assert main(['data', 'foodieqa', '-i', str(tmp_path / 'in.json'), '-o', str(tmp_path / 'eval.jsonl'), '--eval']) == 0
    records = [json.loads(line) for line in (tmp_path / 'eval.jsonl').read_text(encoding='utf-8').splitlines()]
    assert records == [{**FOODIE_LLAVA[0], 'choices': ['四川', '广东', '山东', '江苏'], 'answer': 1},
                       {**FOODIE_LLAVA[1], 'choices': ['炒', '蒸', '炸', '煮'], 'answer': 3}]


def test_foodieqa_bad_entries_and_missing_images_are_one_line_errors(tmp_path, capsys):
    src = tmp_path / 'in.json'
    src.write_text(json.dumps([FOODIE[0], {**FOODIE[1], 'answer': '7'}], ensure_ascii=False), encoding='utf-8')
    assert main(['data', 'foodieqa', '-i', str(src), '-o', str(tmp_path / 'o.json')]) == 1
    assert capsys.readouterr().err == f"mmllava data: error: {src}: entry 1: answer '7' is not an index into its 4 choices\n"
    src.write_text(json.dumps([{'question': 'q', 'choices': ['a'], 'answer': '0'}]))
    assert main(['data', 'foodieqa', '-i', str(src), '-o', str(tmp_path / 'o.json')]) == 1
    assert capsys.readouterr().err == f"mmllava data: error: {src}: entry 0: missing field 'food_meta'\n"
    src.write_text(json.dumps(FOODIE, ensure_ascii=False), encoding='utf-8')
    (tmp_path / 'images').mkdir()
    (tmp_path / 'images' / 'abc.jpg').write_bytes(b'')
    assert main(['data', 'foodieqa', '-i', str(src), '-o', str(tmp_path / 'o.json'), '--image-root', str(tmp_path)]) == 1
    assert capsys.readouterr().err == (f'mmllava data: error: 1 of 2 images are not under --image-root {tmp_path}, '
                                       'e.g. images/def.jpg\n')
