"""OpenAI chat-completion requests -> :class:`~mmllava.serve.worker.ChatRequest`, with every
problem reported as a :class:`RequestError` that names the field (``messages[1].content[0].image_url``).

Accepted: ``system`` (or ``developer``) messages first, then ``user`` and ``assistant`` turns
alternating, ending with ``user``; content is a string or a list of ``text`` and ``image_url`` parts
(images only in user messages, placed before the turn's text as in LLaVA training). An image URL is a
``data:image/...;base64,`` URL, or a local path / ``file://`` URL inside the folder the operator
allowed; remote URLs are never fetched. Sampling: ``max_tokens`` (or ``max_completion_tokens``),
``temperature`` (0 = greedy), ``top_p``, ``seed``, ``stream``, ``stream_options.include_usage``.
Fields this server does not use (penalties, ``user``, ...) are ignored.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlparse

from mmllava.chat.session import GenerationSettings
from mmllava.constants import DEFAULT_IMAGE_TOKEN
from mmllava.serve.limits import Limits, PendingImage, RequestError, check_request_images, decode_image, inspect_image
from mmllava.serve.local_images import FileRefused, read_allowed_file
from mmllava.serve.worker import ChatRequest, Exchange

SYSTEM_ROLES = ('system', 'developer')
DEFAULT_MAX_TOKENS = 512


@dataclass
class ParsedRequest:
    """A validated request: what to generate and how to answer (streamed or not)."""

    request: ChatRequest
    stream: bool = False
    include_usage: bool = False


def _number(body: dict, key: str, default, low: float, high: float, low_open: bool = False, integer=False):
    """``body[key]`` checked to be a number (an integer if ``integer``) in ``[low, high]``
    (``(low, high]`` if ``low_open``), or ``default`` when absent or null."""
    value = body.get(key)
    if value is None:
        return default
    kind = 'an integer' if integer else 'a number'
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise RequestError(key, f'must be {kind}, got {value!r}')
    if not math.isfinite(value):  # 1e999 parses as inf, and NaN passes every comparison
        raise RequestError(key, f'must be a finite number, got {value!r}')
    if value > high or value < low or (low_open and value == low):
        raise RequestError(key, f'must be {kind} in {"(" if low_open else "["}{low}, {high}], got {value!r}')
    return value


def decode_image_url(url: Any, param: str, allow_local_images: Path | None, max_image_pixels: int,
                     max_file_bytes: int) -> PendingImage:
    """The image an ``image_url`` names (a base64 data URL, or a file under ``allow_local_images``),
    checked from its header against ``max_image_pixels`` but not decoded yet."""
    if not isinstance(url, str) or not url:
        raise RequestError(param, 'must be a non-empty string URL')
    if url.startswith('data:'):
        header, sep, data = url[5:].partition(',')
        if not sep or not header.startswith('image/') or not header.endswith(';base64'):
            raise RequestError(param, 'a data URL must be data:image/<type>;base64,<data>')
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(param, 'the data URL is not valid base64') from None
        return inspect_image(raw, param, max_image_pixels)
    scheme = urlparse(url).scheme
    if scheme not in ('', 'file'):
        raise RequestError(param, f'{scheme} URLs are not fetched by this server; send the image as a data URL '
                                  '(data:image/png;base64,...)')
    if allow_local_images is None:
        raise RequestError(param, 'local image paths are disabled; send a data URL, or start the server with '
                                  '--allow-local-images DIR')
    path = unquote(urlparse(url).path) if scheme == 'file' else url
    try:
        raw = read_allowed_file(path, allow_local_images, max_file_bytes)
    except FileRefused as e:
        raise RequestError(param, str(e), e.status) from None
    return inspect_image(raw, param, max_image_pixels)


def _content(message: dict, param: str, role: str, image: Callable[[Any, str], Any]) -> tuple[str, list]:
    """A message's text (its text parts joined by newlines) and images."""
    content = message.get('content')
    if isinstance(content, str):
        parts = [{'type': 'text', 'text': content}]
    elif isinstance(content, list):
        parts = content
    else:
        raise RequestError(f'{param}.content', 'must be a string or a list of content parts')
    texts, images = [], []
    for j, part in enumerate(parts):
        where = f'{param}.content[{j}]'
        kind = part.get('type') if isinstance(part, dict) else None
        if kind == 'text':
            if not isinstance(part.get('text'), str):
                raise RequestError(f'{where}.text', 'must be a string')
            texts.append(part['text'])
        elif kind == 'image_url':
            if role != 'user':
                raise RequestError(where, f'only user messages can hold images, not {role} messages')
            image_url = part.get('image_url')
            url = image_url.get('url') if isinstance(image_url, dict) else image_url
            images.append(image(url, f'{where}.image_url'))
        else:
            raise RequestError(f'{where}.type', f"must be 'text' or 'image_url', got {kind!r}")
    text = '\n'.join(texts)
    if DEFAULT_IMAGE_TOKEN in text:
        raise RequestError(f'{param}.content', f'{DEFAULT_IMAGE_TOKEN} is reserved; send images as image_url parts')
    if not text.strip() and not images and role == 'user':
        raise RequestError(f'{param}.content', 'is empty')
    return text, images


def _conversation(messages: Any, image: Callable[[Any, str], Any]) -> tuple[str | None, list[Exchange], str, list]:
    """System prompt, past exchanges, and the last user turn's text and images (``image(url, param)`` decodes one)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError('messages', 'must be a non-empty list of messages')
    system, turns = [], []
    for i, message in enumerate(messages):
        param = f'messages[{i}]'
        if not isinstance(message, dict):
            raise RequestError(param, 'must be an object with role and content')
        role = message.get('role')
        if role in SYSTEM_ROLES and not turns:
            system.append(_content(message, param, role, image)[0])
            continue
        expected = 'user' if len(turns) % 2 == 0 else 'assistant'
        if role != expected:
            raise RequestError(f'{param}.role', f'expected {expected!r} (system messages first, then user and '
                                                f'assistant turns alternating), got {role!r}')
        turns.append(_content(message, param, role, image))
    if len(turns) % 2 == 0:
        raise RequestError(f'messages[{len(messages) - 1}].role', "the last message must be the user's")
    history = [Exchange(text, answer, images) for (text, images), (answer, _) in zip(turns[:-1:2], turns[1::2])]
    return '\n'.join(system) if system else None, history, *turns[-1]


def _refuse_constant(name: str):
    raise ValueError(f'{name} is not a number JSON allows')


def parse_json_body(body: bytes) -> Any:
    """A request body decoded as strict JSON: no ``NaN`` / ``Infinity``, no unpaired surrogate in
    any string, and nesting only as deep as the decoder's recursion limit, else :class:`RequestError`."""
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise RequestError('body', 'JSON nested too deeply') from None
    except ValueError as e:  # also UnicodeDecodeError, and integers of more than 4300 digits
        raise RequestError('body', f'not valid JSON: {e}') from None
    _check_strings(data)
    return data


def _check_strings(data: Any) -> None:
    """Refuse strings (keys included) that are not valid Unicode: JSON's ``\\ud800`` escapes decode to
    unpaired surrogates, which no tokenizer or UTF-8 encoder takes. Iterative: ``data`` may be deep."""
    stack = [(data, 'body')]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, where))
                stack.append((item, key if where == 'body' else f'{where}.{key}'))
        elif isinstance(value, list):
            stack.extend((item, f'{where}[{i}]') for i, item in enumerate(value))
        elif isinstance(value, str):
            try:
                value.encode('utf-8')
            except UnicodeEncodeError:
                raise RequestError(where, 'is not valid Unicode (an unpaired surrogate)') from None


def parse_chat_request(body: Any, model_id: str, allow_local_images: Path | None = None,
                       text_only: bool = False, limits: Limits = Limits(),
                       max_file_bytes: int = 32 << 20) -> ParsedRequest:
    """Validate an OpenAI ``/v1/chat/completions`` JSON body for the model ``model_id`` (which
    takes no images if ``text_only``); ``allow_local_images`` is the folder image paths may name
    (files of at most ``max_file_bytes``). Images are checked against ``limits`` from their headers
    and left undecoded (:class:`PendingImage`): :func:`decode_request_images` decodes them."""
    if not isinstance(body, dict):
        raise RequestError('body', 'must be a JSON object')
    model = body.get('model')
    if model is not None and model != model_id:
        raise RequestError('model', f'unknown model {model!r}; this server serves {model_id!r}')
    if body.get('n') not in (None, 1):
        raise RequestError('n', 'only n=1 is supported')
    if body.get('stop') is not None:
        raise RequestError('stop', "custom stop sequences are not supported (the model's template stops it)")
    stream = body.get('stream', False)
    options = body.get('stream_options') or {}
    if not isinstance(stream, bool):
        raise RequestError('stream', f'must be true or false, got {stream!r}')
    if not isinstance(options, dict) or not isinstance(options.get('include_usage', False), bool):
        raise RequestError('stream_options', 'must be an object like {"include_usage": true}')
    max_tokens = _number(body, 'max_tokens', None, 1, 1 << 20, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, 'max_completion_tokens', DEFAULT_MAX_TOKENS, 1, 1 << 20, integer=True)
    settings = GenerationSettings(max_new_tokens=max_tokens, temperature=_number(body, 'temperature', 1.0, 0, 2),
                                  top_p=_number(body, 'top_p', 1.0, 0, 1, low_open=True))
    seed = _number(body, 'seed', None, 0, 2**63 - 1, integer=True)

    def image(url, param):
        if text_only:
            raise RequestError(param, 'this model is text-only and takes no images')
        return decode_image_url(url, param, allow_local_images, limits.max_image_pixels, max_file_bytes)

    system, history, text, images = _conversation(body.get('messages'), image)
    check_request_images([*(i for past in history for i in past.images), *images], limits)
    return ParsedRequest(ChatRequest(text, images, history, system, settings, seed), stream,
                         stream and options.get('include_usage', False))


def decode_request_images(parsed: ParsedRequest) -> ParsedRequest:
    """Decode ``parsed``'s :class:`PendingImage` s into RGB PIL images, in place (hold the decoding semaphore)."""
    request = parsed.request
    for images in [past.images for past in request.history] + [request.images]:
        images[:] = [decode_image(image.raw, image.param) if isinstance(image, PendingImage) else image
                     for image in images]
    return parsed
