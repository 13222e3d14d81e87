"""mmllava serve under load and faults, on 127.0.0.1, each test ending by itself:

- a pixel-bomb burst (9000x9000 PNGs of a few hundred KB, 8- and 16-bit) is refused from the image
  headers, and the server's peak memory (VmHWM, measured from /proc) grows by less than 128 MB; a burst
  of the largest images the budget allows stays under the bound the budget and queue imply;
- concurrent streams with a small queue, some clients hanging up: every request ends as 200 or 503,
  none lost or hung, and the server is idle after;
- slow clients: headers and bodies that do not arrive in time close the connection / get 408, and
  headers over 16 KB get 431;
- with a slowed-down model (each decoder layer sleeps ``PAUSE`` s): a client gone during the prefill
  stops it before the next layer; abandoned non-streaming requests leave the queue at once; SIGTERM
  stops the server within seconds, the stream in flight ending with an error event and the queued
  request with 503.
"""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from served_model import (CONVERSATION, MAX_NEW_TOKENS, get_json, greedy_answers, png_url,  # noqa: F401
                          running_process, served_chat_model, served_model)

from mmllava.serve.limits import DECODE_CONCURRENCY, DEFAULT_MAX_IMAGE_PIXELS

(FIRST, FIRST_IMAGE), _ = CONVERSATION
KEY = 'test-key'
AUTH = {'Authorization': f'Bearer {KEY}', 'Content-Type': 'application/json'}
MAX_QUEUE = 2
PAUSE = 1.0  # seconds each decoder layer of the slowed-down model sleeps (the tiny LLM has 2)
# Runs `mmllava SERVE ...` with every decoder layer sleeping PAUSE s after it ran and appending a line
# to LAYER_LOG first: a model as slow as a large one, and a record of which layers ran.
SLOW_SERVE = '''
import sys, time, torch
from mmllava.cli import main
layer_log, pause = sys.argv.pop(1), float(sys.argv.pop(1))
def slow(module, args, output):
    if type(module).__name__.endswith('DecoderLayer'):
        with open(layer_log, 'a') as out:
            out.write(f'{time.monotonic()}\\n')
        time.sleep(pause)
torch.nn.modules.module.register_module_forward_hook(slow)
sys.exit(main(sys.argv[1:]))
'''


def body(*images: str, text: str = FIRST, **options) -> bytes:
    parts = [{'type': 'image_url', 'image_url': {'url': url}} for url in images]
    return json.dumps({'messages': [{'role': 'user', 'content': [*parts, {'type': 'text', 'text': text}]}],
                       'max_tokens': MAX_NEW_TOKENS, 'temperature': 0, **options}).encode()


def connect(url: str) -> http.client.HTTPConnection:
    host, port = url.removeprefix('http://').split(':')
    return http.client.HTTPConnection(host, int(port), timeout=120)


def post(url: str, data: bytes) -> tuple[int, str]:
    connection = connect(url)
    try:
        connection.request('POST', '/v1/chat/completions', data, AUTH)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def open_stream(url: str, data: bytes) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    connection = connect(url)
    connection.request('POST', '/v1/chat/completions', data, AUTH)
    return connection, connection.getresponse()


def hang_up(connection: http.client.HTTPConnection) -> None:
    connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()


def wait_for(condition, what: str, timeout: float = 60):
    """Poll ``condition()`` until it is truthy (returning it); fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f'timed out waiting for {what}')
        time.sleep(0.05)
    return result


def memory_kb(pid: int, field: str) -> int:
    """``field`` (VmRSS, VmHWM) of /proc/PID/status, in kB."""
    with open(f'/proc/{pid}/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ':'))


def reset_peak(pid: int) -> int:
    """Reset the process's peak RSS (VmHWM) to its current RSS, and return that RSS in kB."""
    with open(f'/proc/{pid}/clear_refs', 'w') as clear_refs:
        clear_refs.write('5')
    return memory_kb(pid, 'VmRSS')


def idle(url: str) -> dict:
    health = get_json(url + '/health')
    return health if health['running'] == 0 and health['waiting'] == 0 else None


@pytest.fixture(scope='module')
def server(served_model, tmp_path_factory):  # noqa: F811
    log = tmp_path_factory.mktemp('serve') / 'serve.log'
    with running_process('serve', served_model, log, '/health', '--max-queue', str(MAX_QUEUE), '--max-upload-mb',
                         '8', '--header-timeout', '1', '--body-timeout', '2', '--api-key', KEY) as started:
        yield started
    assert 'Traceback' not in log.read_text()


BUSY = {'error': {'message': f'the model is busy: {MAX_QUEUE} requests are already waiting (--max-queue '
                             f'{MAX_QUEUE}); retry later', 'type': 'server_busy', 'param': None, 'code': None}}


def test_a_pixel_bomb_burst_stays_under_its_memory_peak(server):
    url, process = server
    rgb_bomb, grey16_bomb = png_url((9000, 9000)), png_url((9000, 9000), 'I;16')
    assert len(rgb_bomb) < 400_000 and len(grey16_bomb) < 300_000  # base64 of ~236 KB and ~158 KB
    bodies = [body(rgb_bomb)] * 16 + [body(grey16_bomb)] * 16 + [body(*[rgb_bomb] * 16)]  # the last: 5 MB
    before = reset_peak(process.pid)
    with ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(lambda data: post(url, data), bodies))
    rise_mb = (memory_kb(process.pid, 'VmHWM') - before) / 1024
    limit = f'over the limit of {DEFAULT_MAX_IMAGE_PIXELS} pixels per image (--max-image-pixels)'
    assert [(status, json.loads(text)) for status, text in results] == [(413, {'error': {
        'message': f'messages[0].content[0].image_url: image of 9000x9000 pixels{weight} is {limit}',
        'type': 'invalid_request_error', 'param': 'messages[0].content[0].image_url', 'code': None}})
        for weight in [''] * 16 + [' (16-bit pixels count 3 times)'] * 16 + ['']]
    print(f'\npixel-bomb burst (33 requests, 48 images of 9000x9000): peak RSS rise {rise_mb:.1f} MB')
    assert rise_mb < 128  # decoded, the burst would take 16 x 0.73 GB + 16 x 2.1 GB + 16 x 0.73 GB

    # The largest images the budget takes, 8 at once: DECODE_CONCURRENCY decode at a time (9 bytes a
    # pixel at the peak), and the requests waiting or running each hold one decoded (4 bytes a pixel).
    largest = png_url((4096, 4096))
    bound_mb = (DECODE_CONCURRENCY * 9 + (MAX_QUEUE + 1 + DECODE_CONCURRENCY) * 4) * DEFAULT_MAX_IMAGE_PIXELS / 2**20
    before = reset_peak(process.pid)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda data: post(url, data), [body(largest, max_tokens=1)] * 8))
    rise_mb = (memory_kb(process.pid, 'VmHWM') - before) / 1024
    print(f'8 requests with a 4096x4096 image each: peak RSS rise {rise_mb:.1f} MB (bound {bound_mb:.0f} MB + 64)')
    assert sorted({status for status, _ in results}) in ([200], [200, 503])
    assert all(json.loads(text) == BUSY for status, text in results if status == 503)
    assert rise_mb < bound_mb + 64
    wait_for(lambda: idle(url), 'the server to be idle')


def test_concurrent_streams_with_a_small_queue(server, greedy_answers):  # noqa: F811
    url, _ = server
    clients, start = 24, threading.Barrier(24)

    def one(i):
        start.wait()
        connection, response = open_stream(url, body(png_url((64, 64)), stream=True))
        if response.status != 200:
            return response.status, response.read().decode()
        if i % 3 == 0:  # hangs up after the first event
            response.readline()
            hang_up(connection)
            return 'hung up', None
        text = response.read().decode()
        connection.close()
        return 200, text

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients)))
    assert len(results) == clients
    for status, text in results:
        if status == 503:
            assert json.loads(text) == BUSY
        elif status == 200:
            events = text.split('\n\n')
            assert events[-2:] == ['data: [DONE]', '']
            pieces = [json.loads(e.removeprefix('data: '))['choices'] for e in events[:-2]]
            assert pieces[-1][0]['finish_reason'] in ('stop', 'length')
        else:
            assert status == 'hung up'
    assert sum(status == 200 for status, _ in results) >= 1
    health = wait_for(lambda: idle(url), 'the server to be idle')
    assert (health['status'], health['max_queue']) == ('ok', MAX_QUEUE)


def test_slow_clients_time_out(server):
    url, _ = server
    host, port = url.removeprefix('http://').split(':')
    # Headers at a trickle: the connection is closed after --header-timeout (1 s).
    with socket.create_connection((host, int(port)), timeout=30) as slow:
        slow.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n')
        assert slow.recv(1000) == b''
    # A body that stops coming: 408 after --body-timeout (2 s), and the connection closes.
    with socket.create_connection((host, int(port)), timeout=30) as slow:
        slow.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n'
                     b'Authorization: Bearer ' + KEY.encode() + b'\r\nContent-Length: 1000\r\n\r\n{"messages": ')
        reply = b''
        while chunk := slow.recv(4096):
            reply += chunk
    head, _, answer = reply.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 408 ') and b'connection: close' in head.lower()
    assert json.loads(answer)['error']['message'] == 'body: not received within 2 s (--body-timeout)'
    # Headers over 16 KB: 431, and the connection closes.
    with socket.create_connection((host, int(port)), timeout=30) as large:
        large.sendall(b'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ' + b'x' * (20 << 10) + b'\r\n\r\n')
        reply = b''
        while chunk := large.recv(4096):
            reply += chunk
    head, _, answer = reply.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 431 ') and json.loads(answer)['error']['message'] == (
        f'headers: {len("host127.0.0.1x-pad") + (20 << 10)} bytes, over the limit of 16384')


def test_the_api_key_as_openai_clients_send_it(server):
    from openai import AuthenticationError, OpenAI

    url, _ = server
    assert OpenAI(base_url=url + '/v1', api_key=KEY, max_retries=0).models.list().data[0].id
    with pytest.raises(AuthenticationError) as error:
        OpenAI(base_url=url + '/v1', api_key='wrong', max_retries=0).models.list()
    assert error.value.status_code == 401


@pytest.fixture(scope='module')
def slow_server(served_model, tmp_path_factory):  # noqa: F811
    folder = tmp_path_factory.mktemp('slow_serve')
    layer_log = folder / 'layers.log'
    layer_log.touch()
    with running_process('serve', served_model, folder / 'serve.log', '/health', '--max-queue', str(MAX_QUEUE),
                         '--api-key', KEY, launcher=('-c', SLOW_SERVE, str(layer_log), str(PAUSE))) as (url, process):
        yield url, process, layer_log
    assert 'Traceback' not in (folder / 'serve.log').read_text()


def layers_run(layer_log) -> int:
    return len(layer_log.read_text().splitlines())


def test_a_client_gone_mid_prefill_frees_the_worker(slow_server):
    url, _, layer_log = slow_server
    before = layers_run(layer_log)
    connection, response = open_stream(url, body(png_url((64, 64)), stream=True))
    assert response.status == 200 and json.loads(response.readline().decode().removeprefix('data: '))[
        'choices'][0]['delta'] == {'role': 'assistant', 'content': ''}
    wait_for(lambda: layers_run(layer_log) > before, 'the prefill to start')  # the first layer ran, now sleeps
    hung_up = time.monotonic()
    hang_up(connection)
    wait_for(lambda: idle(url), 'the worker to be free')
    freed = time.monotonic() - hung_up
    # The second layer of the prefill never ran: the worker stopped at the next cancellation point,
    # at most one layer (PAUSE s) after the client left, instead of finishing the prefill and a token.
    assert layers_run(layer_log) == before + 1
    print(f'\nprefill cancelled: the worker was free {freed:.2f} s after the client left '
          f'(a layer takes {PAUSE} s; the whole prefill {2 * PAUSE} s)')


def test_abandoned_requests_leave_the_queue(slow_server):
    url, _, layer_log = slow_server
    before = layers_run(layer_log)
    running, _ = open_stream(url, body(png_url((64, 64)), stream=True, max_tokens=50))
    wait_for(lambda: layers_run(layer_log) > before, 'the generation to start')
    waiting = []
    for _ in range(MAX_QUEUE):  # non-streaming requests whose clients give up while they wait
        connection = connect(url)
        connection.request('POST', '/v1/chat/completions', body(png_url((64, 64))), AUTH)
        waiting.append(connection)
    wait_for(lambda: get_json(url + '/health')['waiting'] == MAX_QUEUE, 'the queue to fill')
    assert post(url, body(png_url((64, 64))))[0] == 503
    for connection in waiting:
        hang_up(connection)
    health = wait_for(lambda: (h := get_json(url + '/health'))['waiting'] == 0 and h, 'the queue to empty')
    assert health['running'] == 1  # the queue emptied while the first request still runs
    hang_up(running)
    wait_for(lambda: idle(url), 'the worker to be free')


def test_sigterm_stops_the_server_and_fails_requests_in_flight(slow_server):
    url, process, layer_log = slow_server
    before = layers_run(layer_log)
    connection, stream = open_stream(url, body(png_url((64, 64)), stream=True, max_tokens=50))
    wait_for(lambda: layers_run(layer_log) > before, 'the generation to start')
    with ThreadPoolExecutor(1) as pool:
        queued = pool.submit(post, url, body(png_url((64, 64))))
        wait_for(lambda: get_json(url + '/health')['waiting'] == 1, 'the second request to wait')
        signalled = time.monotonic()
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        stopped = time.monotonic() - signalled
        shutting_down = {'message': 'the server is shutting down', 'type': 'server_busy', 'param': None, 'code': None}
        status, text = queued.result(timeout=30)
        assert (status, json.loads(text)) == (503, {'error': shutting_down})
    events = stream.read().decode().split('\n\n')
    connection.close()
    assert json.loads(events[-3].removeprefix('data: ')) == {'error': shutting_down}
    assert events[-2:] == ['data: [DONE]', '']
    print(f'\nSIGTERM: the server stopped {stopped:.2f} s after it (a layer takes {PAUSE} s)')
