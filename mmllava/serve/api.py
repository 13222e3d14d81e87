"""The OpenAI-compatible HTTP API of ``mmllava serve`` (FastAPI):

- ``POST /v1/chat/completions``: OpenAI's request and response, streamed as server-sent events
  (``chat.completion.chunk`` objects, then ``data: [DONE]``) with ``"stream": true``;
- ``GET /v1/models``: the one model served; ``GET /health``: liveness and queue load.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a malformed
request (the message starts with the field, e.g. ``messages[1].content[0].image_url: ...``), 413 for
a body over the size limit, 503 when the queue is full (with ``Retry-After``).
"""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from mmllava.errors import MMLLaVAError
from mmllava.serve.messages import ParsedRequest, RequestError, parse_chat_request
from mmllava.serve.worker import Answer, Busy, GenerationWorker, stream


def error_body(message: str, kind: str, param: str | None = None) -> dict:
    """OpenAI's error object."""
    return {'error': {'message': message, 'type': kind, 'param': param, 'code': None}}


def error_response(status: int, message: str, kind: str, param: str | None = None, **headers) -> JSONResponse:
    """An OpenAI-style error with HTTP ``status``."""
    return JSONResponse(error_body(message, kind, param), status_code=status, headers=headers or None)


def _usage(answer: Answer) -> dict:
    usage = answer.usage
    return {'prompt_tokens': usage.prompt_tokens, 'completion_tokens': usage.completion_tokens,
            'total_tokens': usage.prompt_tokens + usage.completion_tokens}


def _failure(error: Exception) -> tuple[int, str, str]:
    """HTTP status, message and OpenAI error type for an exception raised by a generation."""
    if isinstance(error, MMLLaVAError):  # the request asked for something this model cannot do
        return 400, str(error), 'invalid_request_error'
    return 500, f'generation failed: {type(error).__name__}: {error}', 'server_error'


def create_app(worker: GenerationWorker, model_id: str, allow_local_images: Path | None = None,
               max_body_bytes: int = 32 << 20) -> FastAPI:
    """The FastAPI app serving ``worker``'s model under the name ``model_id``.

    ``allow_local_images``: the folder image paths may point into (``None``: data URLs only);
    ``max_body_bytes``: the largest request body accepted (images travel inside it).
    """
    # The interactive docs load their scripts from a CDN; this server works offline, so none.
    app = FastAPI(title='mmllava', docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())
    text_only = worker.chat_model.image_processor is None

    @app.get('/health')
    async def health():
        body = {'status': 'ok' if worker.alive else 'dead', 'model': model_id, **worker.load()}
        return JSONResponse(body, status_code=200 if worker.alive else 503)

    @app.get('/v1/models')
    async def models():
        return {'object': 'list', 'data': [{'id': model_id, 'object': 'model', 'created': created,
                                            'owned_by': 'mmllava'}]}

    @app.post('/v1/chat/completions')
    async def chat_completions(request: Request):
        body = await _read_body(request, max_body_bytes)
        if body is None:
            return error_response(413, f'body: larger than the limit of {max_body_bytes / 2**20:g} MB '
                                       '(--max-upload-mb)', 'invalid_request_error', 'body')
        try:
            parsed = await run_in_threadpool(_parse, body, model_id, allow_local_images, text_only)
        except RequestError as e:
            return error_response(400, str(e), 'invalid_request_error', e.param)
        try:
            events = stream(worker, parsed.request)
        except Busy as e:
            return error_response(503, str(e), 'server_busy', **{'Retry-After': '1'})
        reply = {'id': f'chatcmpl-{uuid.uuid4().hex}', 'created': int(time.time()), 'model': model_id}
        if parsed.stream:
            return StreamingResponse(_sse(events, reply, parsed), media_type='text/event-stream',
                                     headers={'Cache-Control': 'no-cache'})
        try:
            answer = [event async for event in events][-1]
        except Exception as e:
            status, message, kind = _failure(e)
            return error_response(status, message, kind)
        return {**reply, 'object': 'chat.completion', 'usage': _usage(answer),
                'choices': [{'index': 0, 'message': {'role': 'assistant', 'content': answer.text},
                             'finish_reason': answer.usage.finish_reason}]}

    return app


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or ``None`` if it is over ``limit`` bytes. An oversized body is still read
    to its end, without keeping it, so that the client (still sending) gets the 413 and not a broken pipe."""
    body, size = bytearray(), 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            body += chunk
    return bytes(body) if size <= limit else None


def _parse(body: bytes, model_id: str, allow_local_images: Path | None, text_only: bool) -> ParsedRequest:
    """JSON-decode and validate a request body (in a thread: images are decoded here)."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError('body', f'not valid JSON: {e}') from None
    return parse_chat_request(data, model_id, allow_local_images, text_only)


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
