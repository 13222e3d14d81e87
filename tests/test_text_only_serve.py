"""Text-only turns through ``mmllava serve`` and ``demo`` (issue 19): a conversation that starts
without an image, and a turn without an image after one with an image, get ``mmllava chat``'s
greedy answers (the API: 200, streamed and not; the demo page's handler, run in this process on the
model ``demo`` loads) for a LLaVA and an InternVL ``huggingface`` export (transformers' own models,
whose ``generate`` fails on ``pixel_values=None``)."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import torch
from llava_checkpoints import FINETUNE, cfg_options, make_checkpoint
from served_model import running

from mmllava.cli import main

REPO = Path(__file__).resolve().parents[1]
IMAGE = REPO / 'data' / 'synthetic' / 'images' / 'eval_0000.png'
QUESTION, FOLLOW_UP = 'What color is the shape?', 'hi'
MAX_TOKENS = 8
INTERNVL = 'internvl_tiny_internlm2_lora_finetune'


def _llava_export(zoo, root: Path) -> Path:
    make_checkpoint(zoo, root / 'iter_5.pth', qlora=False, scale=0.02)
    assert main(['convert', 'pth_to_hf', FINETUNE, str(root / 'iter_5.pth'), str(root / 'hf'), '--fp32',
                 '--save-format', 'huggingface', '--cfg-options', *cfg_options(zoo, qlora=False)]) == 0
    return root / 'hf'


def _internvl_export(zoo, root: Path) -> Path:
    from mmllava.config import build, load_config, parse_cfg_options

    options = [f'path={zoo["internvl2_official"]}', f'data_root={REPO}/data/synthetic/']
    model = build(load_config(INTERNVL, parse_cfg_options(options)).model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero LoRA adapters: the export really merges something
        for p in model.parameters():
            if p.requires_grad:
                p += 0.05 * torch.randn(p.shape, generator=gen)
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, root / 'iter_5.pth')
    assert main(['convert', 'pth_to_hf', INTERNVL, str(root / 'iter_5.pth'), str(root / 'hf'), '--fp32',
                 '--save-format', 'huggingface', '--cfg-options', *options]) == 0
    return root / 'hf'


def _answers(export: Path) -> dict[str, list[str]]:
    """``ChatSession``'s greedy answers (what ``mmllava chat --temperature 0`` prints) to ``hi`` alone,
    and to ``QUESTION`` with the image then ``hi``."""
    from mmllava.chat.loader import load_chat_model
    from mmllava.chat.session import ChatSession, GenerationSettings
    from mmllava.data.image import load_image

    session = ChatSession(load_chat_model(export), settings=GenerationSettings(max_new_tokens=MAX_TOKENS))
    answers = {'text_first': [session.ask(FOLLOW_UP)]}
    session.reset()
    answers['image_then_text'] = [session.ask(QUESTION, image=load_image(IMAGE)), session.ask(FOLLOW_UP)]
    return answers


@pytest.fixture(scope='module', params=['llava', 'internvl'])
def served(request, tiny_zoo, tmp_path_factory):
    """``(url, answers, export)``: a server on the family's huggingface export, and the greedy chat
    answers (``_answers``)."""
    root = tmp_path_factory.mktemp(f'text_only_{request.param}')
    torch.manual_seed(0)  # the untrained weights (the LLaVA projector) come from torch's RNG
    export = (_llava_export if request.param == 'llava' else _internvl_export)(tiny_zoo, root)
    answers = _answers(export)
    assert all(answer.strip() for lines in answers.values() for answer in lines)
    with running('serve', [str(export)], root / 'serve.log', '/health', '--allow-local-images',
                 str(IMAGE.parent)) as url:
        yield url, answers, export


def _post(url: str, messages: list, stream: bool = False) -> str:
    body = {'messages': messages, 'max_tokens': MAX_TOKENS, 'temperature': 0, 'stream': stream}
    request = urllib.request.Request(url + '/v1/chat/completions', data=json.dumps(body).encode(),
                                     headers={'Content-Type': 'application/json'})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        if not stream:
            return json.load(response)['choices'][0]['message']['content']
        events = [line[6:] for line in response.read().decode().splitlines() if line.startswith('data: ')]
    assert events[-1] == '[DONE]'
    chunks = [json.loads(event) for event in events[:-1]]
    assert not any('error' in chunk for chunk in chunks)
    return ''.join(chunk['choices'][0]['delta'].get('content') or '' for chunk in chunks if chunk['choices'])


def test_a_conversation_that_starts_without_an_image(served):
    url, answers, _ = served
    messages = [{'role': 'user', 'content': FOLLOW_UP}]
    assert _post(url, messages) == _post(url, messages, stream=True) == answers['text_first'][0]


def test_a_turn_without_an_image_after_one_with_an_image(served):
    url, answers, _ = served
    first, second = answers['image_then_text']
    messages = [{'role': 'user', 'content': [{'type': 'image_url', 'image_url': {'url': IMAGE.name}},
                                             {'type': 'text', 'text': QUESTION}]},
                {'role': 'assistant', 'content': first},
                {'role': 'user', 'content': FOLLOW_UP}]
    assert _post(url, messages) == _post(url, messages, stream=True) == second
    assert second != answers['text_first'][0]  # the image turn is in the prompt


def test_the_demo_page_answers_text_only_turns(served):
    import asyncio

    from mmllava.chat.loader import load_chat_model
    from mmllava.serve.gradio_page import build_demo
    from mmllava.serve.worker import GenerationWorker

    _, answers, export = served
    demo = build_demo(GenerationWorker(load_chat_model(export)), 'test')
    respond = next(f.fn for f in demo.fns.values() if getattr(f.fn, '__name__', '') == 'respond')

    def ask(text, image, turns):  # what the page's Send does; returns the conversation after the answer
        async def run():
            return [update async for update in respond(text, image, turns, MAX_TOKENS, 0, 1.0)][-1][1]
        return asyncio.run(run())

    assert ask(FOLLOW_UP, None, [])[-1].exchange.answer == answers['text_first'][0]
    turns = ask(QUESTION, str(IMAGE), [])
    assert [t.exchange.answer for t in ask(FOLLOW_UP, None, turns)] == answers['image_then_text']
