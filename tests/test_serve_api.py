"""mmllava serve: the official ``openai`` client gets ``mmllava chat``'s greedy answer (streamed and
not, with images as data URLs and as allowed local paths, over two turns); 50 concurrent requests
are all answered or refused with 503 and the server stays healthy; malformed requests, requests over
a budget, files that are not regular files or symlinks leaving the allowed folder, and callers
the access checks refuse get 400 / 413 / 415 with the field named, never a 500."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest
from served_model import (CONVERSATION, IMAGES, MAX_NEW_TOKENS, get_json, greedy_answers, png_url,  # noqa: F401
                          running, served_chat_model, served_model)

from mmllava.cli import main

(FIRST, FIRST_IMAGE), (SECOND, SECOND_IMAGE) = CONVERSATION


def data_url(path) -> str:
    return 'data:image/png;base64,' + base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope='module')
def allowed(tmp_path_factory):
    """The folder of --allow-local-images: the conversation's images, a symlink to one of them, and
    what must be refused: a FIFO (reading it would block), a folder, a device (when this user may
    make one), a symlink to a file outside, and a file over the size limit (1 MB)."""
    folder = tmp_path_factory.mktemp('allowed')
    for image in (FIRST_IMAGE, SECOND_IMAGE):
        shutil.copy(image, folder / image.name)
    (folder / 'inside.png').symlink_to(folder / FIRST_IMAGE.name)
    (folder / 'outside.png').symlink_to(IMAGES / FIRST_IMAGE.name)
    os.mkfifo(folder / 'fifo.png')
    (folder / 'folder.png').mkdir()
    (folder / 'big.png').write_bytes(FIRST_IMAGE.read_bytes() + bytes(1 << 20))
    try:
        os.mknod(folder / 'device.png', 0o600 | 0o020000, os.makedev(1, 3))  # a character device, as /dev/null
    except OSError:
        pass
    return folder


@pytest.fixture(scope='module')
def server(served_model, allowed, tmp_path_factory):  # noqa: F811
    log = tmp_path_factory.mktemp('serve') / 'serve.log'
    with running('serve', served_model, log, '/health', '--max-queue', '2', '--max-upload-mb', '1',
                 '--allow-local-images', str(allowed), '--max-prompt-tokens', '256', '--max-images', '3',
                 '--max-image-pixels', '1000000', '--max-request-pixels', '1500000') as url:
        yield url
    assert 'Traceback' not in log.read_text()  # every failure was an answer, none an exception


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


def post(url: str, body, raw: bytes | None = None, **headers) -> tuple[int, dict]:
    request = urllib.request.Request(url + '/v1/chat/completions', data=raw or json.dumps(body).encode(),
                                     headers={'Content-Type': 'application/json', **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_openai_client_gets_chat_answers(server, allowed, chat_answers):
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
    # files this time: a path relative to --allow-local-images (a symlink to the first image, inside
    # the folder), and a file:// URL.
    history = [user(part('inside.png'), {'type': 'text', 'text': FIRST}),
               {'role': 'assistant', 'content': chat_answers[0]},
               user(part((allowed / SECOND_IMAGE.name).as_uri()), {'type': 'text', 'text': SECOND})]
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
HI = b'"messages": [{"role": "user", "content": "hi"}]'


def over_image(size: str, weight: str = '') -> str:
    return (f'messages[0].content[0].image_url: image of {size} pixels{weight} is over the limit of 1000000 '
            'pixels per image (--max-image-pixels)')


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
     'messages[0].content[0].image_url: the data is not an image in a format this server reads '
     '(PNG, JPEG, WEBP, GIF, BMP)'),
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
    # Numbers JSON does not have, or that overflow to infinity, deep nesting, invalid Unicode.
    (b'{' + HI + b', "temperature": NaN}', 400, 'body: not valid JSON: NaN is not a number JSON allows'),
    (b'{' + HI + b', "top_p": -Infinity}', 400, 'body: not valid JSON: -Infinity is not a number JSON allows'),
    (b'{' + HI + b', "temperature": 1e999}', 400, 'temperature: must be a finite number, got inf'),
    (b'[' * 5000 + b']' * 5000, 400, 'body: JSON nested too deeply'),
    (b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud800"}]}]}', 400,
     'messages[0].content[0].text: is not valid Unicode (an unpaired surrogate)'),
    (b'{"messages": [{"role": "user", "content": "hi"}], "\\udfff": 1}', 400,
     'body: is not valid Unicode (an unpaired surrogate)'),
    (b'{"messages": "\xff"}', 400, "body: not valid JSON: 'utf-8' codec can't decode byte 0xff in position 14: "
                                    'invalid start byte'),
    # Image budgets, from the header: 16-bit and transparent palette pixels cost more to decode.
    ({'messages': [user(part(png_url((1100, 1000))))]}, 413, over_image('1100x1000')),
    ({'messages': [user(part(png_url((600, 600), 'I;16')))]}, 413,
     over_image('600x600', ' (16-bit pixels count 3 times)')),
    ({'messages': [user(part(png_url((700, 700), 'P', transparency=0)))]}, 413,
     over_image('700x700', ' (transparent palette pixels count 2.44 times)')),
    ({'messages': [user(part(png_url((900, 900))), part(png_url((900, 900))))]}, 413,
     'messages: the images have 1620000 pixels in all, over the limit of 1500000 per request (--max-request-pixels)'),
    ({'messages': [user(part(FIRST_IMAGE.name), TEXT), {'role': 'assistant', 'content': 'ok'},
                   user(*[part(FIRST_IMAGE.name)] * 3)]}, 413,
     'messages: 4 images, over the limit of 3 per request (--max-images)'),
    # Local files: only regular files, read up to the size limit, symlinks only inside the folder.
    ({'messages': [user(part('fifo.png'))]}, 400,
     "messages[0].content[0].image_url: 'fifo.png' is a FIFO, not a regular file"),
    ({'messages': [user(part('folder.png'))]}, 400,
     "messages[0].content[0].image_url: 'folder.png' is a folder, not a regular file"),
    ({'messages': [user(part('outside.png'))]}, 400, "messages[0].content[0].image_url: 'outside.png' is a symlink "
                                                     'to a file outside the folder allowed by --allow-local-images'),
    ({'messages': [user(part('big.png'))]}, 413,
     "messages[0].content[0].image_url: 'big.png' has 1048789 bytes, over the limit of 1048576 (--max-upload-mb)"),
    ({'messages': [user(part('missing.png'))]}, 400, "messages[0].content[0].image_url: image file not found: "
                                                     "'missing.png'"),
])
def test_malformed_requests_name_the_field(server, body, status, message):
    code, reply = post(server, body, raw=body if isinstance(body, bytes) else None)
    assert get_json(server + '/health')['waiting'] == 0
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


def test_a_device_in_the_allowed_folder_is_refused(server, allowed):
    if not (allowed / 'device.png').exists():
        pytest.skip('this user may not make a device node')
    code, reply = post(server, {'messages': [user(part('device.png'))]})
    assert (code, reply['error']['message']) == (
        400, "messages[0].content[0].image_url: 'device.png' is a device, not a regular file")


def test_callers_the_access_checks_refuse(server):
    port = server.rsplit(':', 1)[1]
    body = json.dumps({'messages': [user(TEXT)], 'max_tokens': 0}).encode()
    # A page on another site can make a browser POST text/plain anywhere, without asking first.
    code, reply = post(server, None, raw=body, **{'Content-Type': 'text/plain'})
    assert (code, reply['error']['message']) == (415, "Content-Type: must be application/json, got 'text/plain'")
    # DNS rebinding: evil.example resolves to 127.0.0.1, and the browser sends its own name.
    code, reply = post(server, None, raw=body, Host=f'evil.example:{port}')
    assert (code, reply['error']['message']) == (
        400, f"Host: 'evil.example:{port}' is not a name of this server; start it with --allowed-hosts NAME "
             'to accept it')
    for host in (f'localhost:{port}', f'127.0.0.1:{port}', f'[::1]:{port}'):  # the request itself is checked next
        assert post(server, None, raw=body, Host=host) == (400, {'error': {
            'message': 'max_tokens: must be an integer in [1, 1048576], got 0', 'type': 'invalid_request_error',
            'param': 'max_tokens', 'code': None}})


def test_prompts_over_the_token_limit_are_refused(server, served_chat_model):  # noqa: F811
    from mmllava.serve.limits import PromptBudget

    # Too many characters for 256 tokens of this vocabulary: refused without tokenising.
    longest = PromptBudget(served_chat_model).longest_token
    text = 'a' * (256 * longest + 1)
    code, reply = post(server, {'messages': [user(part(FIRST_IMAGE.name), {'type': 'text', 'text': text})]})
    assert (code, reply['error']['message']) == (413, f'messages: the prompt has {len(text)} characters, more than '
                                                      '256 tokens can hold, over the limit of 256 tokens '
                                                      '(--max-prompt-tokens)')
    # Within that, but over 256 tokens once tokenised (the image's positions included).
    text = ' '.join(['cat'] * 200)
    code, reply = post(server, {'messages': [user(part(FIRST_IMAGE.name), {'type': 'text', 'text': text})]})
    assert code == 413
    tokens = int(reply['error']['message'].split(' tokens')[0].rsplit(' ', 1)[1])
    assert tokens > 256 and reply['error']['message'] == (
        f'messages: the prompt takes {tokens} tokens (images included), over the limit of 256 tokens '
        '(--max-prompt-tokens)')


def test_a_client_gone_mid_upload_is_dropped_quietly(server):
    import socket

    host, port = server.removeprefix('http://').split(':')
    with socket.create_connection((host, int(port))) as client:
        client.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
                       b'Content-Length: 100000\r\n\r\n{"messages": [')
    health = get_json(server + '/health')
    assert (health['status'], health['waiting']) == ('ok', 0)
    # The module's server fixture then checks its log holds no traceback (Starlette logged one before).
