"""mmllava serve: the official ``openai`` client gets ``mmllava chat``'s greedy answer (streamed and
not, with images as data URLs and as allowed local paths, over two turns); 50 concurrent requests
are all answered or refused with 503 and the server stays healthy; malformed requests get 400 with
the field named."""
from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest
from served_model import (CONVERSATION, IMAGES, MAX_NEW_TOKENS, get_json, greedy_answers, running,  # noqa: F401
                          served_model)

from mmllava.cli import main

(FIRST, FIRST_IMAGE), (SECOND, SECOND_IMAGE) = CONVERSATION


def data_url(path) -> str:
    return 'data:image/png;base64,' + base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope='module')
def server(served_model, tmp_path_factory):  # noqa: F811
    log = tmp_path_factory.mktemp('serve') / 'serve.log'
    with running('serve', served_model, log, '/health', '--max-queue', '2', '--max-upload-mb', '1',
                 '--allow-local-images', str(IMAGES)) as url:
        yield url


@pytest.fixture(scope='module')
def chat_answers(served_model, greedy_answers):  # noqa: F811
    """The conversation's greedy answers, the first checked against ``mmllava chat --temperature 0``'s."""
    import contextlib
    import io

    (question, image), out = CONVERSATION[0], io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(['chat', *served_model, '--image', str(image), '--prompt', question, '--temperature', '0',
                     '--max-new-tokens', str(MAX_NEW_TOKENS), '--no-streamer']) == 0
    assert out.getvalue() == greedy_answers[0] + '\n'
    return greedy_answers


def post(url: str, body, raw: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url + '/v1/chat/completions', data=raw or json.dumps(body).encode(),
                                     headers={'Content-Type': 'application/json'})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_openai_client_gets_chat_answers(server, chat_answers):
    from openai import OpenAI

    client = OpenAI(base_url=server + '/v1', api_key='unused', max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    question = [{'role': 'user', 'content': [{'type': 'image_url', 'image_url': {'url': data_url(FIRST_IMAGE)}},
                                             {'type': 'text', 'text': FIRST}]}]
    reply = client.chat.completions.create(model=model, messages=question, max_tokens=MAX_NEW_TOKENS, temperature=0)
    assert reply.choices[0].message.content == chat_answers[0]
    usage = reply.usage
    assert usage.completion_tokens <= MAX_NEW_TOKENS and usage.prompt_tokens > 16  # the image's positions count
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert reply.choices[0].finish_reason == ('length' if usage.completion_tokens == MAX_NEW_TOKENS else 'stop')

    chunks = list(client.chat.completions.create(model=model, messages=question, max_tokens=MAX_NEW_TOKENS,
                                                 temperature=0, stream=True, stream_options={'include_usage': True}))
    assert ''.join(c.choices[0].delta.content or '' for c in chunks if c.choices) == chat_answers[0]
    assert chunks[-1].usage == usage and chunks[-2].choices[0].finish_reason == reply.choices[0].finish_reason

    # The second turn replays the first and asks SECOND about a second image; images as allowed local
    # files this time: a path relative to --allow-local-images, and a file:// URL.
    history = [user(part(FIRST_IMAGE.name), {'type': 'text', 'text': FIRST}),
               {'role': 'assistant', 'content': chat_answers[0]},
               user(part(SECOND_IMAGE.as_uri()), {'type': 'text', 'text': SECOND})]
    second = client.chat.completions.create(model=model, messages=history, max_tokens=MAX_NEW_TOKENS, temperature=0)
    assert second.choices[0].message.content == chat_answers[1]


LOAD_CLIENT = textwrap.dedent('''
    import json, sys, threading, urllib.error, urllib.request
    from concurrent.futures import ThreadPoolExecutor

    url, body = sys.argv[1], json.loads(sys.stdin.read())
    start = threading.Barrier(50)

    def one(i):
        data = json.dumps({**body, 'stream': i % 2 == 1}).encode()
        request = urllib.request.Request(url, data=data, headers={'Content-Type': 'application/json'})
        start.wait()
        try:
            with urllib.request.urlopen(request, timeout=90) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    with ThreadPoolExecutor(50) as pool:
        print(json.dumps(list(pool.map(one, range(50)))))
''')


def test_fifty_concurrent_requests_are_answered_or_refused(server, chat_answers):
    body = {'messages': [{'role': 'user', 'content': [
        {'type': 'image_url', 'image_url': {'url': data_url(FIRST_IMAGE)}},
        {'type': 'text', 'text': FIRST}]}], 'max_tokens': MAX_NEW_TOKENS, 'temperature': 0}
    done = subprocess.run([sys.executable, '-c', LOAD_CLIENT, server + '/v1/chat/completions'],
                          input=json.dumps(body), capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert len(results) == 50
    busy = {'error': {'message': 'the model is busy: 2 requests are already waiting (--max-queue 2); retry later',
                      'type': 'server_busy', 'param': None, 'code': None}}
    answered = 0
    for i, (status, text) in enumerate(results):
        if status == 503:
            assert json.loads(text) == busy
        elif i % 2:  # streamed: every chunk, then [DONE]
            events = text.split('\n\n')
            assert status == 200 and events[-2:] == ['data: [DONE]', '']
            pieces = [json.loads(e.removeprefix('data: '))['choices'] for e in events[:-2]]
            assert ''.join(c[0]['delta'].get('content', '') for c in pieces if c) == chat_answers[0]
            answered += 1
        else:
            assert status == 200 and json.loads(text)['choices'][0]['message']['content'] == chat_answers[0]
            answered += 1
    assert 3 <= answered < 50  # the running request and the queue's 2 at least; the flood was refused
    health = get_json(server + '/health')
    assert (health['status'], health['running'], health['waiting'], health['max_queue']) == ('ok', 0, 0, 2)
    assert post(server, body)[0] == 200


def part(url: str) -> dict:
    return {'type': 'image_url', 'image_url': {'url': url}}


def user(*content) -> dict:
    return {'role': 'user', 'content': list(content)}


TEXT = {'type': 'text', 'text': 'hi'}
SYSTEM = {'role': 'system', 'content': 'be brief'}


@pytest.mark.parametrize('body, status, message', [
    (b'{"messages": [', 400, 'body: not valid JSON: Expecting value: line 1 column 15 (char 14)'),
    ([], 400, 'body: must be a JSON object'),
    ({}, 400, 'messages: must be a non-empty list of messages'),
    ({'messages': [SYSTEM, user(part('https://example.com/a.png'), TEXT)]}, 400,
     'messages[1].content[0].image_url: https URLs are not fetched by this server; send the image as a data URL '
     '(data:image/png;base64,...)'),
    ({'messages': [SYSTEM, user(TEXT, part('data:image/png;base64,%%%'))]}, 400,
     'messages[1].content[1].image_url: the data URL is not valid base64'),
    ({'messages': [user(part('data:text/plain;base64,aGk='))]}, 400,
     'messages[0].content[0].image_url: a data URL must be data:image/<type>;base64,<data>'),
    ({'messages': [user(part('data:image/png;base64,aGk='))]}, 400,
     'messages[0].content[0].image_url: the data is not an image in a format this server reads'),
    ({'messages': [user(part('../../README.md'))]}, 400,
     "messages[0].content[0].image_url: '../../README.md' is outside the folder allowed by --allow-local-images"),
    ({'messages': [user({'type': 'image_url'})]}, 400,
     'messages[0].content[0].image_url: must be a non-empty string URL'),
    ({'messages': [user({'type': 'input_audio'})]}, 400,
     "messages[0].content[0].type: must be 'text' or 'image_url', got 'input_audio'"),
    ({'messages': [user({'type': 'text', 'text': 'look: <image>'})]}, 400,
     'messages[0].content: <image> is reserved; send images as image_url parts'),
    ({'messages': [user(TEXT), user(TEXT)]}, 400, "messages[1].role: expected 'assistant' (system messages first, "
                                                  "then user and assistant turns alternating), got 'user'"),
    ({'messages': [user(TEXT), {'role': 'assistant', 'content': [part('x.png')]}, user(TEXT)]}, 400,
     'messages[1].content[0]: only user messages can hold images, not assistant messages'),
    ({'messages': [user(TEXT), {'role': 'assistant', 'content': 'ok'}]}, 400,
     "messages[1].role: the last message must be the user's"),
    ({'messages': [{'role': 'user'}]}, 400, 'messages[0].content: must be a string or a list of content parts'),
    ({'messages': [user(TEXT)], 'temperature': 'hot'}, 400, "temperature: must be a number, got 'hot'"),
    ({'messages': [user(TEXT)], 'top_p': 0}, 400, 'top_p: must be a number in (0, 1], got 0'),
    ({'messages': [user(TEXT)], 'max_tokens': 0}, 400, 'max_tokens: must be an integer in [1, 1048576], got 0'),
    ({'messages': [user(TEXT)], 'n': 2}, 400, 'n: only n=1 is supported'),
    ({'messages': [user(TEXT)], 'model': 'gpt-4o'}, 400, "model: unknown model 'gpt-4o'; this server serves 'MODEL'"),
    ({'messages': [user(TEXT)], 'pad': 'x' * (1 << 20)}, 413, 'body: larger than the limit of 1 MB (--max-upload-mb)'),
])
def test_malformed_requests_name_the_field(server, body, status, message):
    code, reply = post(server, body, raw=body if isinstance(body, bytes) else None)
    model = get_json(server + '/v1/models')['data'][0]['id']
    assert (code, reply['error']['message']) == (status, message.replace('MODEL', model))
    assert reply['error']['type'] == 'invalid_request_error'


@pytest.mark.parametrize('options, message', [
    ({}, 'local image paths are disabled; send a data URL, or start the server with --allow-local-images DIR'),
    ({'allow_local_images': IMAGES, 'text_only': True}, 'this model is text-only and takes no images'),
])
def test_image_rules_of_the_server(options, message):
    from mmllava.serve.messages import RequestError, parse_chat_request

    with pytest.raises(RequestError) as error:
        parse_chat_request({'messages': [user(part(FIRST_IMAGE.name))]}, 'm', **options)
    assert str(error.value) == 'messages[0].content[0].image_url: ' + message
