"""LLaVADataset (validation, skip mode, items), llava_collate and LengthGroupedSampler."""
import json
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from tolerances import rounding_tolerance

from mmllava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mmllava.data import ImageProcessor, LengthGroupedSampler, LLaVADataset, llava_collate
from mmllava.errors import MMLLaVAError

SHAPES = Path(__file__).resolve().parent.parent / 'data' / 'synthetic'
IMAGE = 'train_0000.png'
GOOD = {'image': IMAGE, 'conversations': [{'from': 'human', 'value': '<image>\nWhat shape is it?'},
                                          {'from': 'gpt', 'value': 'square'}]}
TEXT = {'conversations': [{'from': 'human', 'value': 'What shape is it?'}, {'from': 'gpt', 'value': 'circle'}]}


@pytest.fixture(scope='module')
def tokenizer(tiny_zoo):
    from mmllava.pretrained import load_tokenizer

    return load_tokenizer(tiny_zoo['internlm2_chat'])


@pytest.fixture(scope='module')
def processor():
    return ImageProcessor(size=64, crop_size=64, patch_size=8)


def _dataset(tokenizer, processor, data_path, **kwargs):
    return LLaVADataset(data_path, SHAPES / 'images', tokenizer, processor, 'internlm2_chat', max_length=256,
                        **kwargs)


def _write(tmp_path, samples, name='data.json'):
    path = tmp_path / name
    path.write_text(json.dumps(samples, indent=1))
    return path


def test_synthetic_finetune_data(tokenizer, processor):
    start = time.perf_counter()
    dataset = _dataset(tokenizer, processor, SHAPES / 'finetune.json')
    assert time.perf_counter() - start < 2.0  # everything is tokenised up front
    assert len(dataset) == 260 and dataset.skipped == []
    lengths = dataset.modality_length
    assert sum(n > 0 for n in lengths) == 240 and sum(n < 0 for n in lengths) == 20
    item = dataset[0]
    assert item['pixel_values'].shape == (3, 64, 64) and item['pixel_values'].dtype == torch.float32
    assert item['input_ids'].count(IMAGE_TOKEN_INDEX) == processor.num_image_tokens == 64
    assert abs(lengths[0]) == len(item['input_ids'])
    assert dataset[len(dataset) - 1]['pixel_values'] is None
    assert dataset.pad_token_id == tokenizer.pad_token_id


def test_tokenizer_and_processor_from_config_dicts(tiny_zoo, tmp_path):
    from mmllava.pretrained import load_image_processor, load_tokenizer

    path = _write(tmp_path, [GOOD])
    dataset = LLaVADataset(path, SHAPES / 'images', dict(type=load_tokenizer, path=tiny_zoo['qwen2_5_instruct']),
                           dict(type=load_image_processor, path=tiny_zoo['clip_vit']), 'qwen_chat', 128)
    assert dataset[0]['input_ids'].count(IMAGE_TOKEN_INDEX) == 64


def test_image_without_placeholder_gets_one_prepended(tokenizer, processor, tmp_path):
    bare = {'image': IMAGE, 'conversations': [{'from': 'human', 'value': 'What shape is it?'},
                                              {'from': 'gpt', 'value': 'square'}]}
    dataset = _dataset(tokenizer, processor, _write(tmp_path, [bare, GOOD]))
    assert dataset[0]['input_ids'] == dataset[1]['input_ids']


def test_pad_to_square_uses_the_mean_colour(tokenizer, tmp_path):
    from PIL import Image

    Image.new('RGB', (64, 32), (255, 0, 0)).save(tmp_path / 'wide.png')
    processor = ImageProcessor(size=64, crop_size=64, patch_size=8)
    sample = {**GOOD, 'image': 'wide.png'}
    path = _write(tmp_path, [sample])
    padded = LLaVADataset(path, tmp_path, tokenizer, processor, 'internlm2_chat', 256, pad_image_to_square=True)
    pixels = padded[0]['pixel_values']
    assert pixels[:, 0, 0].abs().max() < 0.02  # the mean colour (LLaVA's int(255 * mean)) is ~0
    red = (1 - processor.image_mean[0]) / processor.image_std[0]
    # rescale, subtract, divide: 3 fp32 roundings of a value of size |red| (no reduction)
    assert pixels[0, 32, 32].item() == pytest.approx(red, abs=rounding_tolerance(torch.float32, 1, red, sequential=3))


BAD = [
    ({**GOOD, 'image': 'nope.png'}, 'image file not found: {images}/nope.png'),
    ({**GOOD, 'conversations': [{'from': 'human', 'value': '<image> <image>\nq'}, {'from': 'gpt', 'value': 'a'}]},
     '2 <image> placeholders for 1 image'),
    ({'conversations': GOOD['conversations']}, '1 <image> placeholder(s) but the sample has no "image"'),
    ({**GOOD, 'conversations': GOOD['conversations'][::-1]},
     'turn 0: expected role "human", got \'gpt\' (roles must alternate human/gpt, starting with human)'),
    ({**GOOD, 'image': '../pretrain.json'}, "image path '../pretrain.json' leaves the image folder {images}"),
    ({'image': [IMAGE, IMAGE], 'conversations': GOOD['conversations']}, '2 images in one sample'),
    ([1, 2], 'a sample must be an object with "conversations"'),
]


@pytest.mark.parametrize('sample, reason', BAD)
def test_bad_sample_raises_file_index_reason(tokenizer, processor, tmp_path, sample, reason):
    path = _write(tmp_path, [GOOD, TEXT, sample])
    reason = reason.format(images=SHAPES / 'images')
    with pytest.raises(MMLLaVAError) as info:
        _dataset(tokenizer, processor, path)
    assert str(info.value).startswith(f'{path}:2: {reason}')


def test_skip_mode_counts_bad_samples(tokenizer, processor, tmp_path):
    path = _write(tmp_path, [GOOD] + [sample for sample, _ in BAD] + [TEXT])
    dataset = _dataset(tokenizer, processor, path, skip_bad_samples=True)
    assert len(dataset) == 2
    assert [index for index, _ in dataset.skipped] == list(range(1, len(BAD) + 1))
    assert str(dataset.skipped[0][1]).startswith('image file not found')
    with pytest.raises(MMLLaVAError, match=r'no usable samples \(1 skipped\)'):
        _dataset(tokenizer, processor, _write(tmp_path, [BAD[0][0]]), skip_bad_samples=True)


def test_malformed_json_reports_line_and_column(tokenizer, processor, tmp_path):
    path = tmp_path / 'broken.json'
    path.write_text('[\n {"conversations": []},\n {"image": "a.png" "conversations": []}\n]')
    with pytest.raises(MMLLaVAError, match=rf'^{path}:3:20: invalid JSON: Expecting \',\' delimiter$'):
        _dataset(tokenizer, processor, path)
    jsonl = tmp_path / 'broken.jsonl'
    jsonl.write_text(json.dumps(GOOD) + '\n\n{"conversations": \n')
    with pytest.raises(MMLLaVAError, match=rf'^{jsonl}:3:19: invalid JSON: Expecting value'):
        _dataset(tokenizer, processor, jsonl)


def test_jsonl_reads_like_json(tokenizer, processor, tmp_path):
    jsonl = tmp_path / 'data.jsonl'
    jsonl.write_text(json.dumps(GOOD) + '\n' + json.dumps(TEXT) + '\n')
    from_json = _dataset(tokenizer, processor, _write(tmp_path, [GOOD, TEXT]))
    from_jsonl = _dataset(tokenizer, processor, jsonl)
    assert from_json.samples == from_jsonl.samples


def test_collate_pads_right_and_stacks_images(tokenizer, processor, tmp_path):
    dataset = _dataset(tokenizer, processor, _write(tmp_path, [GOOD, TEXT, GOOD]))
    items = [dataset[i] for i in range(3)]
    batch = llava_collate(items, pad_token_id=dataset.pad_token_id)
    assert batch['data_samples'] is None
    data = batch['data']
    length = max(len(item['input_ids']) for item in items)
    assert data['input_ids'].shape == data['labels'].shape == data['attention_mask'].shape == (3, length)
    assert data['pixel_values'].shape == (2, 3, 64, 64)
    assert torch.equal(data['pixel_values'][1], items[2]['pixel_values'])  # a copy: no arithmetic
    n = len(items[1]['input_ids'])
    assert data['input_ids'][1, :n].tolist() == items[1]['input_ids']
    assert (data['input_ids'][1, n:] == dataset.pad_token_id).all()
    assert (data['labels'][1, n:] == IGNORE_INDEX).all() and data['attention_mask'][1].sum() == n
    text_only = llava_collate([items[1]])['data']
    assert text_only['pixel_values'] is None and text_only['input_ids'].shape == (1, n)


class _Lengths:
    def __init__(self, lengths):
        self.modality_length = lengths

    def __len__(self):
        return len(self.modality_length)


LENGTHS = [10 + i for i in range(37)] + [-(5 + i) for i in range(22)]


def _batches(indices, size):
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def test_sampler_groups_modalities_and_is_deterministic():
    dataset = _Lengths(LENGTHS)
    sampler = LengthGroupedSampler(dataset, per_device_batch_size=4, seed=3)
    first = list(sampler)
    assert first == list(LengthGroupedSampler(dataset, per_device_batch_size=4, seed=3))
    assert len(first) == len(sampler) == 40 + 24  # each modality filled up to whole batches
    assert set(first) == set(range(len(LENGTHS)))
    for batch in _batches(first, 4):
        assert len({LENGTHS[i] > 0 for i in batch}) == 1  # never mixes images and text-only
        assert [abs(LENGTHS[i]) for i in batch] == sorted((abs(LENGTHS[i]) for i in batch), reverse=True)
    sampler.set_epoch(1)
    assert list(sampler) != first and sorted(set(sampler)) == sorted(set(first))


def test_sampler_splits_global_batches_across_ranks(monkeypatch):
    import mmllava.data.samplers as samplers

    per_rank = []
    for rank in range(2):
        monkeypatch.setattr(samplers, 'get_dist_info', lambda rank=rank: (rank, 2))
        per_rank.append(list(LengthGroupedSampler(_Lengths(LENGTHS), per_device_batch_size=3, seed=0)))
    assert len(per_rank[0]) == len(per_rank[1]) == (42 + 24) // 2
    assert Counter(per_rank[0] + per_rank[1]).keys() == set(range(len(LENGTHS)))
    for batch0, batch1 in zip(_batches(per_rank[0], 3), _batches(per_rank[1], 3)):
        assert len({LENGTHS[i] > 0 for i in batch0 + batch1}) == 1  # both ranks see the same modality


def test_sampler_and_collate_from_mmengine_config(tokenizer, processor, tmp_path):
    from mmengine.runner import Runner

    dataset = _dataset(tokenizer, processor, _write(tmp_path, [GOOD, TEXT] * 4))
    loader = Runner.build_dataloader(dict(batch_size=2, num_workers=0, dataset=dataset,
                                          sampler=dict(type=LengthGroupedSampler, per_device_batch_size=2),
                                          collate_fn=dict(type=llava_collate)), seed=7)
    batches = list(loader)
    assert len(batches) == 4 and loader.sampler.seed == 7
    assert sorted(b['data']['pixel_values'] is None for b in batches) == [False, False, True, True]
