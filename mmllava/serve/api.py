"""The OpenAI-compatible HTTP API of ``mmllava serve`` (FastAPI):

- ``POST /v1/chat/completions``: OpenAI's request and response, streamed as server-sent events
  (``chat.completion.chunk`` objects, then ``data: [DONE]``) with ``"stream": true``;
- ``GET /v1/models``: the one model served; ``GET /health``: liveness and queue load.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a malformed
request (the message starts with the field, e.g. ``messages[1].content[0].image_url: ...``), 413 for
a body, an image or a prompt over its budget (:mod:`mmllava.serve.limits`), 408 for a body too slow
to arrive, 503 when the queue is full (with ``Retry-After``) or the server is stopping; 400, 401 or
415 from the access checks (:mod:`mmllava.serve.access`). A client that leaves is dropped from the
queue, or its generation stops at the next layer (:mod:`mmllava.serve.cancel`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from mmllava.errors import MMLLaVAError
from mmllava.serve.access import AccessControl
from mmllava.serve.http import BodyRefused, error_body, error_response, read_body, until_disconnected
from mmllava.serve.limits import DECODE_CONCURRENCY, Limits, PromptBudget
from mmllava.serve.messages import (ParsedRequest, RequestError, decode_request_images, parse_chat_request,
                                    parse_json_body)
from mmllava.serve.worker import Answer, Busy, Cancelled, GenerationWorker, ShuttingDown, stream

log = logging.getLogger(__name__)


def _usage(answer: Answer) -> dict:
    usage = answer.usage
    return {'prompt_tokens': usage.prompt_tokens, 'completion_tokens': usage.completion_tokens,
            'total_tokens': usage.prompt_tokens + usage.completion_tokens}


def _failure(error: Exception) -> tuple[int, str, str]:
    """HTTP status, message and OpenAI error type for an exception raised by a generation."""
    if isinstance(error, MMLLaVAError):  # the request asked for something this model cannot do
        return 400, str(error), 'invalid_request_error'
    if isinstance(error, ShuttingDown):
        return 503, str(error), 'server_busy'
    return 500, f'generation failed: {type(error).__name__}: {error}', 'server_error'


def prepare_request(body: bytes, model_id: str, prompt_budget: PromptBudget, allow_local_images: Path | None = None,
                    limits: Limits = Limits(), max_file_bytes: int = 32 << 20) -> ParsedRequest:
    """All the cheap checks of a request body, before it waits for anything (run it in a thread): JSON,
    fields, images from their headers against ``limits``, and prompt tokens against ``prompt_budget``
    (which caps ``max_tokens``); raises :class:`RequestError`. Images are left undecoded."""
    text_only = prompt_budget.chat_model.image_processor is None
    parsed = parse_chat_request(parse_json_body(body), model_id, allow_local_images, text_only, limits,
                                max_file_bytes)
    prompt_budget.check(parsed.request)
    return parsed


def _busy(error: Busy) -> JSONResponse:
    return error_response(503, str(error), 'server_busy', **{'Retry-After': '1'})


def create_app(worker: GenerationWorker, model_id: str, allow_local_images: Path | None = None,
               max_body_bytes: int = 32 << 20, limits: Limits = Limits(), body_timeout: float = 60,
               allowed_hosts: list[str] = (), api_key: str | None = None):
    """The ASGI app serving ``worker``'s model under the name ``model_id``.

    ``allow_local_images``: the folder image paths may point into (``None``: data URLs only);
    ``max_body_bytes``: the largest request body accepted (images travel inside it), and the largest
    local image file read; ``limits``: the image and prompt budgets; ``body_timeout``: seconds to
    receive a body; ``allowed_hosts`` and ``api_key``: who may call (:mod:`mmllava.serve.access`).
    """
    # The interactive docs load their scripts from a CDN; this server works offline, so none.
    app = FastAPI(title='mmllava', docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    prompt_budget = PromptBudget(worker.chat_model, limits.max_prompt_tokens)
    decoding = asyncio.Semaphore(DECODE_CONCURRENCY)  # decoded images are large: a few at a time

    @app.get('/health')
    async def health():
        body = {'status': 'ok' if worker.alive else 'dead', 'model': model_id, **worker.load()}
        return JSONResponse(body, status_code=200 if worker.alive else 503)

    @app.get('/v1/models')
    async def models():
        return {'object': 'list', 'data': [{'id': model_id, 'object': 'model', 'created': created,
                                            'owned_by': 'mmllava'}]}

    def prepare(body: bytes) -> ParsedRequest:
        return prepare_request(body, model_id, prompt_budget, allow_local_images, limits, max_body_bytes)

    @app.post('/v1/chat/completions')
    async def chat_completions(request: Request):
        try:
            body = await read_body(request, max_body_bytes, body_timeout)
        except BodyRefused as e:
            if e.response is None:
                log.info('a client left while sending its request')
            return e.response or JSONResponse({}, status_code=400)  # nobody reads it
        try:
            parsed = await run_in_threadpool(prepare, body)
            worker.check_room()  # a full queue refuses before the images are decoded
            async with decoding:
                await run_in_threadpool(decode_request_images, parsed)
            events = stream(worker, parsed.request)
        except RequestError as e:
            return error_response(e.status, str(e), 'invalid_request_error', e.param)
        except Busy as e:
            return _busy(e)
        reply = {'id': f'chatcmpl-{uuid.uuid4().hex}', 'created': int(time.time()), 'model': model_id}
        if parsed.stream:  # Starlette stops the stream (and so the job) when the client disconnects
            return StreamingResponse(_sse(events, reply, parsed), media_type='text/event-stream',
                                     headers={'Cache-Control': 'no-cache'})
        try:
            answer = await _unless_disconnected(_last(events), request)
        except Cancelled:
            log.info('a client left before its answer')
            return JSONResponse({}, status_code=400)  # nobody reads it
        except Exception as e:
            status, message, kind = _failure(e)
            return error_response(status, message, kind)
        return {**reply, 'object': 'chat.completion', 'usage': _usage(answer),
                'choices': [{'index': 0, 'message': {'role': 'assistant', 'content': answer.text},
                             'finish_reason': answer.usage.finish_reason}]}

    return AccessControl(app, allowed_hosts, api_key)


async def _last(events):
    """The last event of ``events`` (the :class:`Answer`)."""
    last = None
    async for last in events:
        pass
    return last


async def _unless_disconnected(answer, request: Request):
    """Await ``answer``; if the client disconnects first, stop it (which cancels the job: it leaves the
    queue, or stops at its next layer) and raise :class:`Cancelled`."""
    answering = asyncio.ensure_future(answer)
    gone = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({answering, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # the handler itself was cancelled (shutdown): so is the answer
        answering.cancel()
        raise
    finally:
        gone.cancel()
    if answering.done():
        return answering.result()
    answering.cancel()
    try:
        await answering
    except asyncio.CancelledError:
        pass
    raise Cancelled('the client disconnected')


async def _sse(events, reply: dict, parsed: ParsedRequest):
    """Server-sent events in OpenAI's chunk format; an error after the stream began is sent as an
    ``error`` event (the ``openai`` client raises it)."""
    def chunk(delta: dict | None, finish_reason: str | None = None, usage: dict | None = None) -> str:
        choices = [] if delta is None else [{'index': 0, 'delta': delta, 'finish_reason': finish_reason}]
        body = {**reply, 'object': 'chat.completion.chunk', 'choices': choices}
        if parsed.include_usage:
            body['usage'] = usage
        return f'data: {json.dumps(body)}\n\n'

    yield chunk({'role': 'assistant', 'content': ''})
    try:
        async for event in events:
            if isinstance(event, Answer):
                yield chunk({}, event.usage.finish_reason)
                if parsed.include_usage:
                    yield chunk(None, usage=_usage(event))
            else:
                yield chunk({'content': event})
    except Exception as e:
        _, message, kind = _failure(e)
        yield f'data: {json.dumps(error_body(message, kind))}\n\n'
    yield 'data: [DONE]\n\n'
