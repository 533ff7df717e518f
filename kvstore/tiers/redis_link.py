"""The connection to Redis shared by the remote tier and the global index, and its outage state.

Every Redis call goes through `RedisLink.call`, which bounds it by `timeout_s` (socket timeouts, no
client-side retries) and turns any Redis or socket error into the call's fallback value: a read
becomes a miss, a write is dropped. The first failure opens an *episode*: one warning line, the
link reports itself down (health DEGRADED), and calls answer their fallback at once instead of
waiting on a dead socket. A background thread (the index publisher's) calls `probe` about once a
second; the first PING that succeeds closes the episode with one info line and runs the
`on_reconnect` callbacks (the index is published again).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

log = logging.getLogger(__name__)

T = TypeVar("T")
PROBE_EVERY_S = 1.0  # while down, how often a PING is tried
# What a dead, slow or restarting Redis raises: connection refused/reset, timeouts, a cluster
# whose slots are not all served, a node that is loading its data after a restart.
# (RedisClusterException, "no node reachable", is not a RedisError.)
ERRORS = (redis.RedisError, RedisClusterException, OSError)

Client = redis.Redis | RedisCluster


class RedisLink:
    def __init__(self, url: str, cluster: bool, timeout_s: float) -> None:
        self.url = url
        self.cluster = cluster
        self.timeout_s = timeout_s
        self.on_reconnect: list[Callable[[], None]] = []
        self._client: Client | None = None
        self._lock = threading.Lock()
        self._up = False
        self._ever_up = False
        self._next_probe = 0.0
        self.episodes = 0  # outages seen since start
        self.errors = 0  # calls that failed
        self.last_error = "not connected yet"

    # ------------------------------------------------------------------ state

    @property
    def up(self) -> bool:
        return self._up

    def health(self) -> tuple[bool, str]:
        if self._up:
            return True, "ok"
        return False, f"redis at {_redact(self.url)} unreachable: {self.last_error}"

    # ------------------------------------------------------------------ calls

    def call(self, fn: Callable[[Client], T], fallback: T) -> T:
        """`fn(client)`, or `fallback` when Redis is down or the call fails (which opens an episode)."""
        client = self._client
        if not self._up or client is None:
            return fallback
        try:
            return fn(client)
        except ERRORS as exc:
            self._failed(exc)
            return fallback

    def probe(self) -> bool:
        """While down (at most once per PROBE_EVERY_S): PING, and on success close the episode and
        run the reconnect callbacks. Returns whether the link is up."""
        if self._up:
            return True
        now = time.monotonic()
        if now < self._next_probe:
            return False
        self._next_probe = now + PROBE_EVERY_S
        try:
            client = self._client or self._connect()
            client.ping()
        except ERRORS as exc:
            self._client = None if self.cluster else self._client  # a cluster client re-reads its slots
            self.last_error = _describe(exc)
            if not self._ever_up and self.episodes == 0:
                self.episodes = 1
                log.warning(
                    "redis at %s unreachable: %s; remote reads miss until it is back",
                    _redact(self.url),
                    self.last_error,
                )
            return False
        self._client = client
        with self._lock:
            was_down = self._ever_up or self.episodes > 0
            self._up = self._ever_up = True
        log.info("redis at %s %s", _redact(self.url), "reconnected" if was_down else "connected")
        for callback in self.on_reconnect:
            callback()
        return True

    def close(self) -> None:
        client, self._client, self._up = self._client, None, False
        if client is not None:
            with contextlib.suppress(*ERRORS):
                client.close()

    # ------------------------------------------------------------------ internals

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        with self._lock:
            if not self._up:
                return
            self._up = False
            self.episodes += 1
        self.last_error = _describe(exc)
        self._next_probe = time.monotonic() + PROBE_EVERY_S
        log.warning(
            "redis at %s failed (%s): remote reads miss and writes wait (bounded) until it is back",
            _redact(self.url),
            self.last_error,
        )

    def _connect(self) -> Client:
        t = self.timeout_s
        # A 1 MiB read buffer: blocks are MiBs, and the default 32 KiB costs ~30% of get throughput.
        common: dict[str, Any] = {
            "socket_timeout": t,
            "socket_connect_timeout": t,
            "socket_read_size": 1 << 20,
        }
        if self.cluster:
            # One try per call: an outage must cost one timeout, not several.
            return RedisCluster.from_url(self.url, retry=Retry(NoBackoff(), 0), **common)
        return redis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0), **common)


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _redact(url: str) -> str:
    """The URL without a password (redis://user:secret@host -> redis://user:***@host)."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"
