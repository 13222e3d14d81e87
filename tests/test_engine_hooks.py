"""Hooks with stand-in tokenizer/model/runner: what they log, what they feed ``model.generate``, when."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import torch
from PIL import Image

from mmllava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from mmllava.datatools.display import format_sample, render_view
from mmllava.engine import DatasetInfoHook, EvaluateChatHook


class CharTokenizer:
    """One token per character; ids 1 and 2 are BOS and EOS."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, None

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return ''.join(chr(int(i)) for i in ids if not (skip_special_tokens and int(i) in (1, 2)))


class StandInLLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(3, 1)

    def get_input_embeddings(self):
        return self.embed


class RecordingModel(torch.nn.Module):
    """Answers ``ok`` + EOS; has the parts a LLaVA ``ChatModel`` reads (``llm``, ``visual_encoder``)."""

    def __init__(self):
        super().__init__()
        self.llm = StandInLLM()
        self.visual_encoder = torch.nn.Linear(1, 1)
        self.calls = []

    def generate(self, input_ids, pixel_values=None, **kwargs):
        self.calls.append((input_ids, pixel_values, kwargs, self.training))
        return torch.tensor([[ord('o'), ord('k'), 2]])


class Logger:
    def __init__(self):
        self.records = []

    def info(self, message):
        self.records.append((logging.INFO, message))

    def warning(self, message):
        self.records.append((logging.WARNING, message))


def _runner(model=None, dataset=None):
    return SimpleNamespace(model=model, iter=0, max_iters=4, logger=Logger(),
                           train_dataloader=SimpleNamespace(dataset=dataset))


def test_format_sample_shows_images_and_masked_runs():
    """The training log and ``log-dataset`` render -200 / -100 runs through the same function."""
    input_ids = [1, *[IMAGE_TOKEN_INDEX] * 3, *map(ord, 'Q?'), *map(ord, 'A!'), 2]
    labels = [IGNORE_INDEX] * 6 + [ord('A'), ord('!'), 2]
    tokenizer = CharTokenizer()
    assert format_sample(input_ids, labels, tokenizer) == (
        '9 tokens, 3 trained\n'
        '--- input ---\n\x01<image x 3>Q?A!\x02\n'
        '--- labels ([-100 x N] = N positions not trained) ---\n[-100 x 6]A!\x02')
    assert render_view('text', input_ids, labels, tokenizer) == '\x01<image x 3>Q?A!\x02'
    assert render_view('masked_text', input_ids, labels, tokenizer) == '[-100 x 1]<image x 3>[-100 x 2]A!\x02'
    assert render_view('input_ids', input_ids, labels, tokenizer) == '[1, -200 x 3, 81, 63, 65, 33, 2]'
    assert render_view('labels', input_ids, labels, tokenizer) == '[-100 x 6, 65, 33, 2]'


def test_dataset_info_hook_warns_when_nothing_is_trained():
    dataset = [{'input_ids': [1, 65, 66], 'labels': [IGNORE_INDEX] * 3}]
    runner = _runner(dataset=dataset)
    DatasetInfoHook(tokenizer=CharTokenizer()).before_train(runner)
    assert any('[-100 x 3]' in m for _, m in runner.logger.records)
    assert any(level == logging.WARNING and 'no trained token' in m for level, m in runner.logger.records)


def test_evaluate_chat_hook_prompts_with_template_and_image_tokens(tmp_path):
    image = tmp_path / 'red.png'
    Image.new('RGB', (4, 4), (255, 0, 0)).save(image)
    processor = type('Processor', (), {'num_image_tokens': 3, '__call__': lambda self, img: torch.ones(3, 4, 4)})()
    model = RecordingModel()
    hook = EvaluateChatHook(tokenizer=CharTokenizer(), evaluation_inputs=['Colour?'], evaluation_images=str(image),
                            image_processor=processor, prompt_template='internlm2_chat', every_n_iters=2,
                            max_new_tokens=5)
    runner = _runner(model=model)
    hook.before_train(runner)
    input_ids, pixel_values, kwargs, training = model.calls[0]
    prompt = CharTokenizer().decode([i for i in input_ids[0].tolist() if i != IMAGE_TOKEN_INDEX])
    assert input_ids[0, 0] == 1 and input_ids[0].tolist().count(IMAGE_TOKEN_INDEX) == 3
    assert prompt == '\x01<|im_start|>user\n\nColour?<|im_end|>\n<|im_start|>assistant\n'
    assert pixel_values.shape == (1, 3, 4, 4) and not training
    assert kwargs['max_new_tokens'] == 5 and kwargs['do_sample'] is False and 2 in kwargs['eos_token_id']
    assert "'Colour?' -> 'ok'" in runner.logger.records[-1][1]

    # every 2 iterations, and once more at the end unless the last iteration just evaluated
    for step in range(4):
        runner.iter = step
        hook.after_train_iter(runner, step)
    runner.iter = 4
    hook.after_train(runner)
    assert len(model.calls) == 3
