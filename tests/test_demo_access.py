"""mmllava demo refuses requests addressed to a name it was not given (DNS rebinding: a page on
evil.example, whose name resolves to 127.0.0.1, would otherwise drive the page and read its answers)."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

from served_model import running, served_model  # noqa: F401


def get(url: str, host: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={'Host': host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_the_demo_checks_the_host(served_model, tmp_path):  # noqa: F811
    with running('demo', served_model, tmp_path / 'demo.log', '/', '--allowed-hosts', 'demo.example') as url:
        port = url.rsplit(':', 1)[1]
        assert get(url + '/')[0] == 200
        assert get(url + '/', f'demo.example:{port}')[0] == 200
        status, body = get(url + '/config', f'evil.example:{port}')
        assert (status, json.loads(body)['error']['message']) == (
            400, f"Host: 'evil.example:{port}' is not a name of this server; start it with --allowed-hosts NAME "
                 'to accept it')
