"""HTTP plumbing of ``mmllava serve``: OpenAI-style error responses, reading a body within a size and
time limit, and running uvicorn with read timeouts and a shutdown that fails in-flight requests.

Timeouts: the request line and headers must arrive within ``header_timeout`` seconds of the
connection opening (or of the previous response on a kept-alive connection), the body within
``body_timeout`` (:func:`read_body`); an idle kept-alive connection closes after 5 s. Headers are
limited to 16 KB. On SIGTERM / SIGINT the worker is closed first (queued requests get 503, the
running one stops at its next layer and its stream ends with an error event), then uvicorn waits at
most ``SHUTDOWN_GRACE`` seconds for connections to finish.
"""
from __future__ import annotations

import asyncio
import logging
import threading

import h11
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect, Request

log = logging.getLogger(__name__)
KEEP_ALIVE_TIMEOUT = 5
SHUTDOWN_GRACE = 3
MAX_HEADER_BYTES = 16 << 10  # headers over this get 431 (AccessControl), or 400 from h11 if sent slowly


def error_body(message: str, kind: str, param: str | None = None) -> dict:
    """OpenAI's error object."""
    return {'error': {'message': message, 'type': kind, 'param': param, 'code': None}}


def error_response(status: int, message: str, kind: str, param: str | None = None, **headers) -> JSONResponse:
    """An OpenAI-style error with HTTP ``status``."""
    return JSONResponse(error_body(message, kind, param), status_code=status, headers=headers or None)


class BodyRefused(Exception):
    """The body cannot be taken: ``response`` says why (413, 408), or is ``None`` if the client left."""

    def __init__(self, response: JSONResponse | None):
        super().__init__(getattr(response, 'status_code', 'client gone'))
        self.response = response


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, or :class:`BodyRefused`: over ``limit`` bytes (413: an oversized body is still
    read to its end, without keeping it, so that the client, still sending, gets the 413 and not a
    broken pipe), not all received within ``timeout`` seconds (408, and the connection closes), or
    the client gone before its end (nothing to answer)."""
    async def receive() -> tuple[bytearray, int]:
        body, size = bytearray(), 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                body += chunk
        return body, size

    try:
        body, size = await asyncio.wait_for(receive(), timeout)
    except asyncio.TimeoutError:
        raise BodyRefused(error_response(408, f'body: not received within {timeout:g} s (--body-timeout)',
                                         'invalid_request_error', 'body', Connection='close')) from None
    except ClientDisconnect:
        raise BodyRefused(None) from None
    if size > limit:
        raise BodyRefused(error_response(413, f'body: larger than the limit of {limit / 2**20:g} MB '
                                              '(--max-upload-mb)', 'invalid_request_error', 'body'))
    return bytes(body)


async def until_disconnected(request: Request) -> None:
    """Return when the client of ``request`` (whose body has been read) disconnects."""
    while (await request.receive())['type'] != 'http.disconnect':
        pass


def header_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol that closes a connection whose request line and headers have not all
    arrived ``seconds`` after it opened or after its previous response (uvicorn itself waits forever)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol  # the optional mmllava[serve] extra

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            self._header_timer = self.loop.call_later(seconds, self._headers_late)

        def _headers_late(self) -> None:
            # Still waiting for (the rest of) a request's headers: h11 has not seen a whole request.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info('closing a connection whose request headers took over %g s', seconds)
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm_header_timer()

        def connection_lost(self, exc) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
            super().connection_lost(exc)

    return HeaderTimeoutH11Protocol


def run_server(app, host: str, port: int, on_exit, header_timeout: float, max_connections: int) -> None:
    """Serve ``app`` with uvicorn until SIGTERM / SIGINT; ``on_exit()`` runs first (in its own thread:
    a signal handler must not wait for a lock the interrupted code may hold)."""
    import uvicorn  # the optional mmllava[serve] extra

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            threading.Thread(target=on_exit, name='mmllava-shutdown', daemon=True).start()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level='info', access_log=False,
                            http=header_timeout_protocol(header_timeout), timeout_keep_alive=KEEP_ALIVE_TIMEOUT,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE, limit_concurrency=max_connections,
                            h11_max_incomplete_event_size=MAX_HEADER_BYTES)
    Server(config).run()
