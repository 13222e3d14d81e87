"""Who may call ``mmllava serve``: an ASGI middleware checking, before the app reads anything,

- the headers' size (16 KB; 431 otherwise);
- ``Host`` (against DNS rebinding: a web page on ``evil.example`` whose name resolves to 127.0.0.1
  could otherwise read the answers): an IP address, ``localhost``, or a name in ``allowed_hosts``
  (``*`` turns the check off); 400 otherwise;
- ``Authorization: Bearer KEY`` on ``/v1/`` routes when an API key is set (as OpenAI clients send
  their ``api_key``); 401 otherwise. ``/health`` stays open for load balancers;
- ``Content-Type: application/json`` on POST (415 otherwise): a web page can make a browser send
  ``text/plain`` to any address without asking, but not ``application/json``.

The demo (Gradio, which posts forms and files) uses the ``Host`` check only.
"""
from __future__ import annotations

import hmac
import ipaddress

from mmllava.serve.http import MAX_HEADER_BYTES, error_response

LOCAL_NAMES = ('localhost',)


def _host_name(host: str) -> str:
    """The name part of a ``Host`` header (``[::1]:8000`` -> ``::1``, ``a.b:80`` -> ``a.b``)."""
    host = host.strip().lower()
    if host.startswith('['):
        return host[1:].partition(']')[0]
    return host.rpartition(':')[0] if host.count(':') == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class AccessControl:
    """ASGI middleware: ``allowed_hosts`` (names besides IP addresses and localhost; ``['*']``: any),
    ``api_key`` (``None``: no key needed), ``require_json`` (the Content-Type check)."""

    def __init__(self, app, allowed_hosts: list[str] = (), api_key: str | None = None, require_json: bool = True):
        self.app = app
        self.require_json = require_json
        self.any_host = '*' in allowed_hosts
        self.hosts = {name.strip().lower().rstrip('.') for name in allowed_hosts} | set(LOCAL_NAMES)
        self.api_key = api_key.encode() if api_key else None

    def refusal(self, scope):
        """The error response for ``scope``'s request, or ``None`` if it may go on."""
        headers, size = {}, 0
        for key, value in scope.get('headers', []):
            headers.setdefault(key.decode('latin-1').lower(), value.decode('latin-1'))
            size += len(key) + len(value)
        if size > MAX_HEADER_BYTES:  # h11 bounds only headers arriving in pieces
            return error_response(431, f'headers: {size} bytes, over the limit of {MAX_HEADER_BYTES}',
                                  'invalid_request_error', 'headers', Connection='close')
        host = headers.get('host')
        if host is not None and not self.any_host:
            name = _host_name(host).rstrip('.')
            if not (_is_ip(name) or name in self.hosts):
                return error_response(400, f'Host: {host[:100]!r} is not a name of this server; start it with '
                                           '--allowed-hosts NAME to accept it', 'invalid_request_error', 'Host')
        if self.api_key is not None and scope['path'].startswith('/v1/'):
            scheme, _, key = headers.get('authorization', '').partition(' ')
            if scheme.lower() != 'bearer' or not hmac.compare_digest(key.strip().encode(), self.api_key):
                return error_response(401, 'Authorization: a valid "Bearer KEY" is required (--api-key)',
                                      'invalid_request_error', 'Authorization', **{'WWW-Authenticate': 'Bearer'})
        if self.require_json and scope['method'] == 'POST':
            media_type = headers.get('content-type', '').partition(';')[0].strip().lower()
            if media_type != 'application/json':
                return error_response(415, f'Content-Type: must be application/json, got {media_type or "none"!r}',
                                      'invalid_request_error', 'Content-Type')
        return None

    async def __call__(self, scope, receive, send):
        if scope['type'] == 'http':
            response = self.refusal(scope)
            if response is not None:
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
