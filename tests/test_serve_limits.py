"""mmllava serve's budgets and guards, in this process: image costs from headers (16-bit, palette,
alpha), prompt tokens counted as the generation counts them and ``max_tokens`` capped, the request
parser fuzzed (every body is accepted or refused with a ``RequestError``, nothing else escapes), a
job cancelled during prefill stops at the next layer, the queue frees a cancelled job's slot at once
and ``close`` fails every job, and the access checks."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from served_model import CONVERSATION, png_bytes, png_url, served_chat_model, served_model  # noqa: F401

from mmllava.serve.limits import (Limits, PromptBudget, RequestError, context_length, decode_cost, decode_image,
                                  inspect_image)

(FIRST, FIRST_IMAGE), (SECOND, SECOND_IMAGE) = CONVERSATION


def data_url(raw: bytes) -> str:
    return 'data:image/png;base64,' + base64.b64encode(raw).decode()


@pytest.mark.parametrize('mode, save, cost', [
    ('RGB', {}, 100 * 90),
    ('L', {}, 100 * 90 * 6 // 9),  # grey decodes to 5 bytes a pixel at most, RGB to 8
    ('RGBA', {}, 100 * 90 * 21 // 9),
    ('I;16', {}, 100 * 90 * 3),  # to_rgb scales 16-bit grey in float64
    ('P', {'transparency': 0}, 100 * 90 * 22 // 9),  # a transparent palette goes through RGBA
    ('P', {}, 100 * 90 * 6 // 9),
])
def test_image_cost_comes_from_the_header(mode, save, cost):
    raw = png_bytes((100, 90), mode, **save)
    image = inspect_image(raw, 'image', cost)
    assert (image.width, image.height, image.cost) == (100, 90, cost)
    with pytest.raises(RequestError) as error:
        inspect_image(raw, 'image', cost - 1)
    assert error.value.status == 413 and str(error.value).startswith('image: image of 100x90 pixels')
    assert decode_image(raw, 'image').size == (100, 90)


def test_a_pixel_bomb_is_refused_from_its_header():
    from PIL import Image

    raw = png_bytes((9000, 9000), '1')  # 81 megapixels in a few kilobytes
    assert len(raw) < 20_000 and decode_cost(9000, 9000, '1') == 54_000_000
    with pytest.raises(RequestError) as error:
        inspect_image(raw, 'image', Limits().max_image_pixels)
    assert str(error.value) == ('image: image of 9000x9000 pixels (1 pixels count 0.667 times) is over the limit '
                                'of 16777216 pixels per image (--max-image-pixels)')
    # Past twice PIL's own limit, PIL refuses from the header too; the answer is still one line.
    with pytest.raises(RequestError) as error:
        inspect_image(png_bytes((20000, 10000), '1'), 'image', 10)
    assert str(error.value) == (f'image: the image has more than twice {Image.MAX_IMAGE_PIXELS} pixels, over the '
                                'limit of 10 pixels per image (--max-image-pixels)')


def test_an_eps_file_is_not_opened():
    with pytest.raises(RequestError) as error:  # EPS would run Ghostscript
        inspect_image(b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n', 'image', 100)
    assert str(error.value) == 'image: the data is not an image in a format this server reads (PNG, JPEG, WEBP, GIF, BMP)'


def _image_files() -> list[bytes]:
    from PIL import Image

    files = []
    for format, mode in [('PNG', 'RGBA'), ('JPEG', 'RGB'), ('GIF', 'P'), ('BMP', 'RGB'), ('WEBP', 'RGB')]:
        out = io.BytesIO()
        Image.linear_gradient('L').resize((24, 16)).convert(mode).save(out, format)
        files.append(out.getvalue())
    return files


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_damaged_images_are_refused_in_one_line(data):
    """An image file with bytes changed, cut or inserted is decoded or refused with a RequestError (400)."""
    raw = bytearray(data.draw(st.sampled_from(_IMAGE_FILES)))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        action = data.draw(st.sampled_from(['set', 'cut', 'insert']))
        if action == 'set':
            raw[at] = data.draw(st.integers(0, 255))
        elif action == 'cut':
            del raw[at:at + data.draw(st.integers(1, 64))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        if not raw:
            return
    try:
        image = inspect_image(bytes(raw), 'image', 1 << 20)
        assert decode_image(image.raw, 'image').mode == 'RGB'
    except RequestError as e:
        assert e.status in (400, 413) and '\n' not in str(e)


_IMAGE_FILES = _image_files()


def request_body(*turns, **options) -> bytes:
    """A chat body: ``turns`` alternate (text, image path or None) user turns and assistant answers."""
    messages = []
    for i, turn in enumerate(turns):
        if i % 2:
            messages.append({'role': 'assistant', 'content': turn})
        else:
            text, image = turn
            parts = [{'type': 'image_url', 'image_url': {'url': data_url(image.read_bytes())}}] if image else []
            messages.append({'role': 'user', 'content': [*parts, {'type': 'text', 'text': text}]})
    return json.dumps({'messages': messages, **options}).encode()


def test_prompt_tokens_are_counted_as_generation_counts_them(served_chat_model):  # noqa: F811
    from mmllava.chat.session import ChatSession
    from mmllava.serve.api import prepare_request
    from mmllava.serve.messages import decode_request_images

    assert context_length(served_chat_model) == 32768  # the tiny LLM's max_position_embeddings
    budget = PromptBudget(served_chat_model)
    body = request_body((FIRST, FIRST_IMAGE), 'a red square', (SECOND, SECOND_IMAGE), max_tokens=3, temperature=0)
    parsed = prepare_request(body, 'm', budget)
    counted = budget.count(parsed.request)
    request = decode_request_images(parsed).request
    session = ChatSession(served_chat_model, settings=request.settings)
    session.remember(request.history[0].text, request.history[0].answer, request.history[0].images)
    session.ask(request.text, request.images)
    assert session.usage.prompt_tokens == counted > 2 * served_chat_model.num_image_tokens

    # max_tokens is capped at what the context leaves; a prompt filling it is refused.
    budget.context = budget.limit = counted + 2
    parsed = prepare_request(body, 'm', budget)
    assert parsed.request.settings.max_new_tokens == 2
    budget.context = budget.limit = counted
    with pytest.raises(RequestError) as error:
        prepare_request(body, 'm', budget)
    assert (str(error.value), error.value.status) == (
        f"messages: the prompt takes {counted} tokens and leaves no room for an answer in the model's context "
        f'of {counted}', 413)
    budget.limit = counted - 1
    with pytest.raises(RequestError) as error:
        prepare_request(body, 'm', budget)
    assert str(error.value) == (f'messages: the prompt takes {counted} tokens (images included), over the limit '
                                f"of {counted - 1} tokens (the model's context; --max-prompt-tokens)")


# Bodies as a client could send them: valid conversations whose texts, images and options vary
# (any Unicode, unpaired surrogates included; NaN, infinity, huge integers; bad image URLs), random
# JSON in every slot, deep nesting, and bytes that are not JSON or not UTF-8.
_SMALL_PNG = png_url((8, 8))
_texts = st.one_of(st.text(st.characters(exclude_categories=()), max_size=30),  # surrogates included
                   st.sampled_from(['hi', 'a\ud800', '\udfff b', 'what is it?']))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), _texts,
                     st.sampled_from(['<image>', 'user', 'assistant', 'system', 'text', 'image_url']))
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(_texts, inner, max_size=3)), max_leaves=10)
_urls = st.one_of(st.sampled_from([_SMALL_PNG, _SMALL_PNG, 'data:image/png;base64,%%', 'data:image/png;base64,aGk=',
                                   'data:image/png;base64,' + _SMALL_PNG[-40:], 'https://example.com/a.png',
                                   '../x.png', 'file:///etc/passwd', '']), _json)
_image = st.fixed_dictionaries({'type': st.just('image_url'),
                                'image_url': st.one_of(st.fixed_dictionaries({'url': _urls}), _urls)})
_text = st.fixed_dictionaries({'type': st.just('text'), 'text': st.one_of(_texts, _texts, _json)})
_content = st.one_of(_texts, st.lists(st.one_of(_image, _text, _text, _json), min_size=1, max_size=3), _json)


@st.composite
def _conversations(draw):
    """system?, then user / assistant turns alternating, ending with user (roles now and then wrong)."""
    messages = [{'role': 'system', 'content': draw(_content)}] if draw(st.booleans()) else []
    for i in range(2 * draw(st.integers(0, 2)) + 1):
        role = 'user' if i % 2 == 0 else 'assistant'
        messages.append({'role': draw(st.sampled_from([role] * 8 + ['tool'])), 'content': draw(_content)})
    return messages


_options = st.one_of(st.integers(-3, 2**70), st.floats(), _json)
_bodies = st.fixed_dictionaries({'messages': st.one_of(_conversations(), _conversations(), _json)}, optional={
    key: _options for key in ('max_tokens', 'temperature', 'top_p', 'seed', 'stream', 'stream_options', 'n', 'model')})
_raw = st.one_of(st.integers(1, 6000).map(lambda depth: b'[' * depth + b']' * depth),
                 st.binary(max_size=40), st.sampled_from([b'{"messages": [{"role": "user", "content": "hi"}], '
                                                          b'"temperature": NaN}', b'\xff\xfe{', b'']))


@pytest.fixture(scope='module')
def budget(served_chat_model):  # noqa: F811
    return PromptBudget(served_chat_model, 64)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(_bodies, _bodies, _json, _raw), mangle=st.sampled_from(['', 'cut', 'overflow']))
def test_fuzzed_requests_are_answered_or_refused(budget, body, mangle):
    """What the server does with a body before generating: 200 (parsed, and the prompt is one the model
    takes) or 400/413 (``RequestError``), never a 500 (any other exception)."""
    from mmllava.serve.api import prepare_request
    from mmllava.serve.messages import decode_request_images

    raw = body if isinstance(body, bytes) else json.dumps(body).encode('utf-8', 'surrogatepass')
    if mangle == 'cut':
        raw = raw[:len(raw) // 2]
    elif mangle == 'overflow':  # valid JSON numbers that parse as infinity
        raw = raw.replace(b'-Infinity', b'-1e999').replace(b'Infinity', b'1e999').replace(b'NaN', b'1e999')
    try:
        request = decode_request_images(prepare_request(raw, 'm', budget, limits=Limits(max_images=2))).request
    except RequestError as e:
        assert e.status in (400, 413) and str(e).startswith(f'{e.param}: ')
        return
    # Accepted: what the worker gets is well formed.
    assert isinstance(request.text, str) and 1 <= request.settings.max_new_tokens
    request.settings.generate_kwargs()  # raises for settings generate() cannot take
    assert math.isfinite(request.settings.temperature) and math.isfinite(request.settings.top_p)
    assert all(image.mode == 'RGB' for image in request.images)
    assert budget.count(request) <= 64


def _blocking_worker(chat_model, max_queue=2):
    """A worker whose LLM blocks in its first decoder layer until ``release`` is set; ``entered``
    is set when it gets there, and ``layers`` counts the decoder layers that ran."""
    import torch

    from mmllava.serve.worker import GenerationWorker

    entered, release, layers = threading.Event(), threading.Event(), []

    def block(module, args):
        if type(module).__name__.endswith('DecoderLayer'):
            layers.append(module)
            entered.set()
            release.wait()

    handle = torch.nn.modules.module.register_module_forward_pre_hook(block)
    return GenerationWorker(chat_model, max_queue), entered, release, layers, handle


def _request(text=FIRST):
    from mmllava.chat.session import GenerationSettings
    from mmllava.data.image import load_image
    from mmllava.serve.worker import ChatRequest

    return ChatRequest(text, [load_image(FIRST_IMAGE)], settings=GenerationSettings(max_new_tokens=4))


def test_a_job_cancelled_during_prefill_stops_at_the_next_layer(served_chat_model):  # noqa: F811
    from mmllava.serve.worker import Cancelled

    worker, entered, release, layers, handle = _blocking_worker(served_chat_model)
    try:
        results = []
        done = threading.Event()
        job = worker.submit(_request(), lambda event: (results.append(event), done.set()))
        assert entered.wait(60)  # in the first decoder layer of the prefill
        job.cancel()  # the client left
        release.set()
        assert done.wait(60)
        # Nothing streamed; the layer running when it was cancelled was the last (prefill has 2 of them).
        assert len(results) == 1 and isinstance(results[0], Cancelled) and len(layers) == 1
        assert worker.load() == {'running': 0, 'waiting': 0, 'max_queue': 2}
    finally:
        handle.remove()
        release.set()
        worker.close()


def test_the_queue_frees_cancelled_slots_and_close_fails_every_job(served_chat_model):  # noqa: F811
    from mmllava.serve.worker import Busy, ShuttingDown

    worker, entered, release, layers, handle = _blocking_worker(served_chat_model)
    try:
        outcomes = {name: [] for name in 'abcd'}
        running = worker.submit(_request(), outcomes['a'].append)
        assert entered.wait(60)
        waiting = [worker.submit(_request(), outcomes[name].append) for name in 'bc']
        with pytest.raises(Busy):
            worker.submit(_request(), outcomes['d'].append)
        assert worker.load() == {'running': 1, 'waiting': 2, 'max_queue': 2}
        waiting[0].cancel()  # its client left: the slot is free at once, not when the worker gets to it
        assert worker.load() == {'running': 1, 'waiting': 1, 'max_queue': 2}
        worker.submit(_request(), outcomes['d'].append)
        worker.close()  # SIGTERM: the waiting jobs fail now, the running one at its next layer
        with pytest.raises(ShuttingDown):
            worker.check_room()
        release.set()
        worker._thread.join(60)
        assert not worker.alive and running.cancelled.is_set()
        assert [type(e).__name__ for name in 'acd' for e in outcomes[name]] == ['ShuttingDown'] * 3
        assert str(outcomes['a'][0]) == 'the server is shutting down' and outcomes['b'] == []
    finally:
        handle.remove()
        release.set()


def test_access_checks():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from mmllava.serve.access import AccessControl

    async def ok(request):
        return PlainTextResponse('ok')

    app = Starlette(routes=[Route('/health', ok), Route('/v1/chat/completions', ok, methods=['POST'])])
    client = TestClient(AccessControl(app, ['api.example'], 'sekret'), base_url='http://api.example')
    json_type = {'Content-Type': 'application/json; charset=utf-8'}
    assert client.get('/health').text == 'ok'  # open to load balancers, without a key
    refused = client.post('/v1/chat/completions', headers=json_type)
    assert (refused.status_code, refused.json()['error']['message'], refused.headers['WWW-Authenticate']) == (
        401, 'Authorization: a valid "Bearer KEY" is required (--api-key)', 'Bearer')
    for key in ('Bearer wrong', 'Basic sekret', 'sekret'):
        assert client.post('/v1/chat/completions', headers={**json_type, 'Authorization': key}).status_code == 401
    with_key = {**json_type, 'Authorization': 'Bearer sekret'}
    assert client.post('/v1/chat/completions', headers=with_key).text == 'ok'
    assert client.post('/v1/chat/completions', headers={**with_key, 'Host': '10.1.2.3:8000'}).text == 'ok'
    assert client.post('/v1/chat/completions', headers={**with_key, 'Host': 'other.example'}).status_code == 400
    form = client.post('/v1/chat/completions', headers={**with_key, 'Content-Type': 'application/x-www-form-urlencoded'})
    assert form.status_code == 415
    anyone = TestClient(AccessControl(app, ['*']), base_url='http://whatever.example')
    assert anyone.post('/v1/chat/completions', headers=json_type).text == 'ok'


def test_streams_end_when_the_worker_closes(served_chat_model):  # noqa: F811
    """An in-flight stream gets ShuttingDown as its last event (the API turns it into an error event)."""
    from mmllava.serve.worker import ShuttingDown, stream

    worker, entered, release, layers, handle = _blocking_worker(served_chat_model)

    async def consume():
        events = stream(worker, _request())
        await asyncio.get_running_loop().run_in_executor(None, entered.wait, 60)
        worker.close()
        release.set()
        return [event async for event in events]

    try:
        with pytest.raises(ShuttingDown):
            asyncio.run(consume())
    finally:
        handle.remove()
        release.set()


def test_demo_uploads_are_checked_from_the_header(tmp_path):
    from mmllava.data.image import load_image
    from mmllava.errors import MMLLaVAError
    from mmllava.serve.gradio_page import load_upload

    (tmp_path / 'bomb.png').write_bytes(png_bytes((3000, 3000), 'I;16'))
    with pytest.raises(MMLLaVAError) as error:
        load_upload(str(tmp_path / 'bomb.png'))
    assert str(error.value) == ('image: image of 3000x3000 pixels (16-bit pixels count 3 times) is over the limit '
                                'of 16777216 pixels per image (--max-image-pixels)')
    assert load_upload(str(FIRST_IMAGE)).tobytes() == load_image(FIRST_IMAGE).tobytes()  # as mmllava chat reads it
