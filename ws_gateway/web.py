"""The review page over HTTP on the gateway's port: static files, their headers, the origin check.

``GET /`` is ws_gateway/web/index.html; the page's modules and styles are the other files of
ws_gateway/web/; ``/vendor/...`` serves a fixed list of files of the diff2html and highlight.js
npm packages that ``make tools`` installs (``gateway.vendor_dir``, by default the repository's
.tools/node_modules). Nothing the browser loads comes from anywhere else, and every response
carries a Content-Security-Policy that allows only this origin: no inline script or style, no
eval, the WebSocket of this gateway as the only connection.

highlight.js publishes its browser core only as CommonJS (lib/core.js, one file with no
imports); it is served as an ES module by appending an export, so the page needs no build step.

The page signs in with an ``auth`` frame, so no token is ever in a URL. A browser's WebSocket
carries an ``Origin``: the page's own origin (this gateway's address) is always allowed,
others only when listed in ``gateway.allowed_origins``.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
from dataclasses import dataclass
from http import HTTPStatus
from ipaddress import ip_address
from pathlib import Path

import anyio
from websockets.datastructures import Headers, MultipleValuesError
from websockets.http11 import Request, Response

from ws_gateway.settings import GatewaySettings

WEB_DIR = Path(__file__).resolve().parent / "web"
DEFAULT_VENDOR_DIR = Path(__file__).resolve().parent.parent / ".tools" / "node_modules"
INDEX = "index.html"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Paths of the page's own files: lower-case names in sub-directories, no dot files, no "..".
PAGE_PATH = re.compile(r"/((?:[a-z0-9_-]+/)*[a-z0-9_-]+(?:\.[a-z0-9]+)*\.(?:html|js|css|svg))")
# URL → file under the vendor directory.
VENDOR_FILES = {
    "/vendor/diff2html/diff2html-ui-base.min.js": "diff2html/bundles/js/diff2html-ui-base.min.js",
    "/vendor/diff2html/diff2html.min.css": "diff2html/bundles/css/diff2html.min.css",
    "/vendor/highlight.js/core.js": "highlight.js/lib/core.js",
    "/vendor/highlight.js/github.min.css": "highlight.js/styles/github.min.css",
}
HIGHLIGHT_LANGUAGE = re.compile(r"/vendor/highlight\.js/languages/([a-z0-9-]+)\.js")
HIGHLIGHT_CORE = "/vendor/highlight.js/core.js"
COMMONJS_TO_ESM = (b"const module = { exports: {} };\n", b"\nexport default module.exports;\n")

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # noqa: S104 - names, not a bind


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _host_name(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:
        return False


def own_origins(settings: GatewaySettings, port: int, request: Request) -> set[str]:
    """The origins this gateway's page is served from: its bind address (every loopback name
    when it listens on loopback); when it listens on every interface, the request's Host."""
    hosts = {_host_name(settings.host)}
    if _is_loopback(settings.host):
        hosts.update(LOOPBACK_NAMES)
    origins = {f"http://{host}:{port}" for host in hosts}
    if settings.host in WILDCARD_HOSTS:
        requested = _single(request.headers, "Host")
        if requested:
            origins.add(f"http://{requested}")
    return origins


def _single(headers: Headers, name: str) -> str | None:
    try:
        return headers.get(name)
    except MultipleValuesError:
        return None


def origin_allowed(settings: GatewaySettings, port: int, request: Request) -> bool:
    """Clients without an Origin (not browsers) are allowed; browsers from the page's own origin
    or a listed one."""
    values = request.headers.get_all("Origin")
    if not values:
        return True
    if len(values) > 1:
        return False
    origin = values[0]
    if "*" in settings.allowed_origins or origin in settings.allowed_origins:
        return True
    return origin in own_origins(settings, port, request)


def content_security_policy(settings: GatewaySettings, port: int, request: Request) -> str:
    connect = ["'self'"]
    host = _single(request.headers, "Host")
    if host and f"http://{host}" in own_origins(settings, port, request):
        connect.append(f"ws://{host}")
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; font-src 'self'; "
        f"connect-src {' '.join(connect)}; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


class WebAssets:
    """The page's files and the vendor libraries, read once (in a thread) and kept in memory."""

    def __init__(self, vendor_dir: Path | None = None) -> None:
        self._vendor_dir = vendor_dir or DEFAULT_VENDOR_DIR
        self._cache: dict[str, Asset | None] = {}

    def _file_for(self, path: str) -> Path | None:
        if path in ("/", f"/{INDEX}"):
            return WEB_DIR / INDEX
        if path in VENDOR_FILES:
            return self._vendor_dir / VENDOR_FILES[path]
        language = HIGHLIGHT_LANGUAGE.fullmatch(path)
        if language:
            return self._vendor_dir / "highlight.js" / "es" / "languages" / f"{language.group(1)}.js"
        page = PAGE_PATH.fullmatch(path)
        if page and not path.startswith("/vendor/"):
            return WEB_DIR / page.group(1)
        return None

    def _read(self, path: str) -> Asset | None:
        file = self._file_for(path)
        if file is None or not file.is_file():
            return None
        body = file.read_bytes()
        if path == HIGHLIGHT_CORE:
            body = COMMONJS_TO_ESM[0] + body + COMMONJS_TO_ESM[1]
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        return Asset(body, CONTENT_TYPES.get(file.suffix, "application/octet-stream"), etag)

    async def get(self, path: str) -> Asset | None:
        if path not in self._cache:
            self._cache[path] = await anyio.to_thread.run_sync(self._read, path)
        return self._cache[path]


def _headers(settings: GatewaySettings, port: int, request: Request, extra: list[tuple[str, str]]) -> Headers:
    return Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Security-Policy", content_security_policy(settings, port, request)),
            ("X-Content-Type-Options", "nosniff"),
            ("X-Frame-Options", "DENY"),
            ("Referrer-Policy", "no-referrer"),
            ("Cross-Origin-Opener-Policy", "same-origin"),
            ("Cross-Origin-Resource-Policy", "same-origin"),
            *extra,
        ]
    )


async def respond(assets: WebAssets, settings: GatewaySettings, port: int, request: Request, path: str) -> Response:
    """The page's answer to ``GET path``: the file, 304 when the browser has it, or 404."""
    asset = await assets.get(path)
    if asset is None:
        body = b"not found; the page is at /, the WebSocket endpoint at /ws\n"
        headers = _headers(settings, port, request, [("Content-Type", "text/plain; charset=utf-8")])
        headers["Content-Length"] = str(len(body))
        return Response(HTTPStatus.NOT_FOUND.value, HTTPStatus.NOT_FOUND.phrase, headers, body)
    cache = [("ETag", asset.etag), ("Cache-Control", "no-cache")]
    if _single(request.headers, "If-None-Match") == asset.etag:
        headers = _headers(settings, port, request, [*cache, ("Content-Length", "0")])
        return Response(HTTPStatus.NOT_MODIFIED.value, HTTPStatus.NOT_MODIFIED.phrase, headers, b"")
    headers = _headers(
        settings,
        port,
        request,
        [("Content-Type", asset.content_type), ("Content-Length", str(len(asset.body))), *cache],
    )
    return Response(HTTPStatus.OK.value, HTTPStatus.OK.phrase, headers, asset.body)


def own_host(host: str) -> str:
    """The host part of the page's URL: loopback for a gateway that listens everywhere."""
    return "127.0.0.1" if host in WILDCARD_HOSTS else _host_name(host)
