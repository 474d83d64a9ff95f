"""The page over HTTP: files and their headers, the vendor libraries, and the origin check."""

from __future__ import annotations

import re

import httpx
import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request

from testkit.clients import open_client, recv
from tests.ws_gateway.conftest import with_settings
from ws_gateway import Gateway, web

pytestmark = pytest.mark.anyio


def base(gateway: Gateway) -> str:
    return f"http://127.0.0.1:{gateway.port}"


async def test_the_page_and_its_headers(gateway: Gateway, token: str) -> None:
    async with httpx.AsyncClient() as http:
        page = await http.get(f"{base(gateway)}/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
        assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
        assert f"ws://127.0.0.1:{gateway.port}" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY"
        html = page.text
        # Every script is a file of this origin; no inline script, style or handler.
        assert re.findall(r"<script(?![^>]*\bsrc=\"/)", html) == []
        assert "style=" not in html and "<style" not in html
        assert not re.search(r"\son[a-z]+=", html)
        assert token not in html
        for src in re.findall(r'(?:src|href)="(/[^"]*)"', html):
            asset = await http.get(f"{base(gateway)}{src}")
            assert asset.status_code == 200, src
            assert asset.headers["content-security-policy"] == csp
        again = await http.get(f"{base(gateway)}/", headers={"If-None-Match": page.headers["etag"]})
        assert again.status_code == 304


async def test_modules_and_vendor_files(gateway: Gateway) -> None:
    async with httpx.AsyncClient() as http:
        app = await http.get(f"{base(gateway)}/js/app.js")
        assert app.headers["content-type"] == "text/javascript; charset=utf-8"
        core = await http.get(f"{base(gateway)}/vendor/highlight.js/core.js")
        assert core.status_code == 200 and core.text.rstrip().endswith("export default module.exports;")
        python = await http.get(f"{base(gateway)}/vendor/highlight.js/languages/python.js")
        assert python.status_code == 200 and "export { python as default }" in python.text
        for missing in (
            "/vendor/highlight.js/languages/../../../etc/passwd.js",
            "/vendor/highlight.js/languages/nope.js",
            "/vendor/diff2html/package.json",
            "/js/../../server.py",
            "/.hidden.js",
            "/%2e%2e/server.py",
            "/server.py",
        ):
            assert (await http.get(f"{base(gateway)}{missing}")).status_code == 404, missing


async def test_the_pages_own_origin_is_allowed_others_are_not(gateway: Gateway, token: str) -> None:
    for origin in (f"http://127.0.0.1:{gateway.port}", f"http://localhost:{gateway.port}"):
        async with open_client(gateway.url, token, origin=origin) as ws:
            assert (await recv(ws))["type"] == "hello"
    for origin in ("http://evil.example", f"http://127.0.0.1:{gateway.port + 1}", f"https://127.0.0.1:{gateway.port}"):
        with pytest.raises(InvalidStatus) as refused:
            async with open_client(gateway.url, token, origin=origin):
                pass
        assert refused.value.response.status_code == 403


def test_a_gateway_on_every_interface_allows_the_origin_it_was_reached_at() -> None:
    settings = with_settings(host="0.0.0.0")  # noqa: S104 - only the origin rule is tested; nothing binds

    def request(origin: str, host: str = "10.1.2.3:8765") -> Request:
        return Request("/ws", Headers([("Host", host), ("Origin", origin)]))

    assert web.origin_allowed(settings, 8765, request("http://10.1.2.3:8765"))
    assert not web.origin_allowed(settings, 8765, request("http://evil.example"))
    assert web.origin_allowed(with_settings(allowed_origins=("*",)), 8765, request("http://evil.example"))
