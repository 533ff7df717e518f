"""The HTTP proxy: forwards every request to the engine and every answer back, unchanged and as
it comes (streams chunk by chunk), and turns chat traffic into kvstore hints on the way.

Built on aiohttp: one well-kept package that is both the server and the client, streams in both
directions, and is already in the environment through LMCache.

Chat requests (POST to `.../chat/completions`, `.../completions`, `.../messages`,
`.../responses`) whose JSON names a session (`identify.py`) get the session added to their
`kv_transfer_params` (`tagging.py`) and feed the tracker (`tracker.py`); every other
request passes through untouched. kvstore being down never fails a request (hints are queued and
advisory); a body that is not JSON goes to the engine as it came, which answers it as it would.
The proxy itself answers only when the engine cannot be reached (502) or does not take the
connection in time (504).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from kvstore.proxy import identify
from kvstore.proxy.answers import CHAT, COMPLETIONS, MESSAGES, RESPONSES, Outcome, answer_reader
from kvstore.proxy.tagging import SESSION_KEY, tag_body
from kvstore.proxy.tracker import LastRequest, Tracker
from kvstore.proxy.warm import KEPT_HEADERS, Warmer
from kvstore.sdk.core import DEFAULT_ADDRESS

log = logging.getLogger("kvstore.proxy")

# Longest suffix first: ".../chat/completions" also ends in "/completions".
CHAT_PATHS = (
    ("/chat/completions", CHAT),
    ("/completions", COMPLETIONS),
    ("/messages", MESSAGES),
    ("/responses", RESPONSES),
)
# Headers about one connection, not the message: never forwarded (RFC 9110 §7.6.1), nor Host.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)


@dataclass(frozen=True)
class ProxyConfig:
    upstream: str  # the engine's base URL, e.g. http://127.0.0.1:8000
    kvstore: str = DEFAULT_ADDRESS
    namespace: str = "default"
    # keys of kv_transfer_params that name the session in chat requests (empty: leave them alone)
    session_keys: tuple[str, ...] = (SESSION_KEY,)
    max_sessions: int = 1000  # sessions whose state (and last request) the proxy keeps
    max_body_bytes: int = 64 * 2**20
    hint_timeout_s: float = 2.0
    connect_timeout_s: float = 10.0
    retention_check_s: float = 1.0


def chat_kind(request: web.Request) -> str | None:
    if request.method != "POST":
        return None
    return next((kind for suffix, kind in CHAT_PATHS if request.path.endswith(suffix)), None)


def json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def forwarded(headers: Mapping[str, str], drop: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    hop = HOP_BY_HOP | {h.strip().lower() for h in headers.get("connection", "").split(",")} | drop
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in hop)


def gateway_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"type": "upstream_error", "message": message}}, status=status)


class Proxy:
    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.upstream = config.upstream.rstrip("/")
        self.tracker = Tracker(config.kvstore, config.namespace, config.hint_timeout_s, config.max_sessions)
        self._client: aiohttp.ClientSession | None = None
        self._warmer: Warmer | None = None
        self._expiry: asyncio.Task[None] | None = None

    @property
    def warmer(self) -> Warmer:
        """Sends a session's warm request (see warm.py); there once the app has started."""
        assert self._warmer is not None, "the proxy app has not started"
        return self._warmer

    async def start(self, app: web.Application) -> None:
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),  # as many upstream connections as clients
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s),
            auto_decompress=False,  # bytes pass through as the engine sent them
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._warmer = Warmer(self._client, self.upstream, self.tracker, self.config.session_keys)
        self._expiry = asyncio.create_task(self._expire_retained())

    async def stop(self, app: web.Application) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        if self._client is not None:
            await self._client.close()

    async def _expire_retained(self) -> None:
        while True:
            await asyncio.sleep(self.config.retention_check_s)
            for session in await self.tracker.expire():
                log.info("session %s: past the retention its client asked for; closed in kvstore", session)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        kind = chat_kind(request)
        if kind is None:
            body = request.content if request.body_exists else None
            return (await self._forward(request, body, None))[0]
        raw = await request.read()
        body = json_object(raw)
        session = identify.session_id(request.headers, body) if body is not None else None
        if body is None or session is None:
            return (await self._forward(request, raw, None))[0]
        kept = {h: request.headers[h] for h in KEPT_HEADERS if h in request.headers}
        last = LastRequest(kind, request.path_qs, body, kept)
        conv = self.tracker.request(session, last, identify.retention_s(body))
        outcome = None
        try:
            keys = self.config.session_keys
            data = tag_body(raw, body, session, keys) if keys else raw
            response, outcome = await self._forward(request, data, kind)
        finally:
            self.tracker.answered(conv, outcome)
        return response

    async def _forward(
        self, request: web.Request, data: Any, kind: str | None
    ) -> tuple[web.StreamResponse, Outcome | None]:
        """Send the request upstream and stream the answer back; the outcome of a chat answer."""
        assert self._client is not None
        # A body we pass through as it came keeps its length; one we rebuilt gets its own.
        headers = forwarded(
            request.headers, frozenset() if data is request.content else frozenset({"content-length"})
        )
        try:
            upstream = await self._client.request(
                request.method,
                self.upstream + request.path_qs,
                headers=headers,
                data=data,
                allow_redirects=False,
            )
        except TimeoutError:
            wait = self.config.connect_timeout_s
            return gateway_error(504, f"no connection to the engine at {self.upstream} in {wait:g} s"), None
        except aiohttp.ClientError as exc:
            log.warning("engine at %s unreachable: %s", self.upstream, exc)
            return gateway_error(502, f"cannot reach the engine at {self.upstream}: {exc}"), None
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            response.headers.extend(forwarded(upstream.headers))
            reader = None
            if kind is not None and upstream.status < 400 and "content-encoding" not in upstream.headers:
                reader = answer_reader(kind, upstream.headers.get("content-type", ""))
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                    if reader is not None:
                        reader.feed(chunk)
            except aiohttp.ClientPayloadError as exc:  # the engine broke off: so must we
                log.warning("engine at %s broke off an answer: %s", self.upstream, exc)
                if request.transport is not None:
                    request.transport.abort()
                return response, None
            except ConnectionResetError:  # the client went away; leaving closes the engine's request
                return response, None
            await response.write_eof()
            return response, reader.outcome() if reader is not None else None


PROXY = web.AppKey("proxy", Proxy)


def build_app(config: ProxyConfig) -> web.Application:
    proxy = Proxy(config)
    app = web.Application(client_max_size=config.max_body_bytes)
    app[PROXY] = proxy
    app.on_startup.append(proxy.start)
    app.on_cleanup.append(proxy.stop)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    return app


async def serve(config: ProxyConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run until SIGTERM or SIGINT."""
    runner = web.AppRunner(build_app(config), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound = runner.addresses[0][1]
        print(
            f"kvstore proxy listening on http://{host}:{bound} (engine {config.upstream}, "
            f"kvstore {config.kvstore}, namespace {config.namespace})",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
