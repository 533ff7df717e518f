"""The connector's settings (vLLM's `kv_connector_extra_config`) and its bounded calls to kvstore.

kvstore is advisory for the engine: a call that fails or runs past `timeout_s` becomes a miss (or a
dropped save) with one log line, and kvstore is then left alone for `retry_s` so a dead or stalled
sidecar costs the engine one timeout per `retry_s`, not one per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from kvstore.sdk.core import DEFAULT_ADDRESS

from kvstore.errors import KVStoreError

log = logging.getLogger("kvstore.integrations.vllm")
T = TypeVar("T")

SESSION_KEY = "session_id"  # kv_transfer_params field naming the agent session
WARM_KEY = "kvstore_warm"  # kv_transfer_params field marking a warm request (integrations/vllm/warm.py)


def _flag(value: Any) -> bool:
    return str(value).lower() not in ("false", "0", "no", "off")


@dataclass(frozen=True)
class ConnectorSettings:
    address: str = DEFAULT_ADDRESS
    namespace: str = "default"
    timeout_s: float = 1.0
    retry_s: float = 5.0
    session_key: str = SESSION_KEY
    shared_memory: bool = True
    load: bool = True
    save: bool = True

    @classmethod
    def from_extra(cls, extra: Mapping[str, Any] | None) -> ConnectorSettings:
        extra = extra or {}
        return cls(
            address=str(extra.get("address", DEFAULT_ADDRESS)),
            namespace=str(extra.get("namespace", "default")),
            timeout_s=float(extra.get("timeout_s", 1.0)),
            retry_s=float(extra.get("retry_s", 5.0)),
            session_key=str(extra.get("session_key", SESSION_KEY)),
            shared_memory=_flag(extra.get("shared_memory", True)),
            load=_flag(extra.get("load", True)),
            save=_flag(extra.get("save", True)),
        )


def request_session(params: Mapping[str, Any] | None, key: str) -> tuple[str | None, bool]:
    """(session, warm) of a request's kv_transfer_params. A warm request names its session but
    acts for it: kvstore must not take it for the session coming back (that would end its tool
    call), so its calls go out with no session."""
    if not params:
        return None, False
    session = params.get(key)
    return (str(session) if session else None), bool(params.get(WARM_KEY))


# Failures that say kvstore is down or overloaded. Others (a session closed meanwhile, a block
# size mismatch) concern one call: it is dropped, and kvstore is not left alone for them.
UNREACHABLE = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN"}
)


class Guard:
    """Bounded, failure-tolerant calls: after kvstore failed to answer, every call returns its
    default until `retry_s` has passed."""

    def __init__(self, address: str, retry_s: float) -> None:
        self.address = address
        self.retry_s = retry_s
        self.failures = 0
        self._resting_until = 0.0
        self._lock = threading.Lock()

    @property
    def resting(self) -> bool:
        return time.monotonic() < self._resting_until

    def call(self, what: str, fn: Callable[[], T], default: T) -> T:
        if self.resting:
            return default
        try:
            result = fn()
        except (KVStoreError, ValueError, OSError) as exc:
            if isinstance(exc, KVStoreError) and getattr(exc, "code", "UNKNOWN") not in UNREACHABLE:
                log.info("kvstore at %s: %s refused: %s", self.address, what, exc)
                return default
            with self._lock:
                self.failures += 1
                first = self._resting_until == 0.0 or not self.resting
                self._resting_until = time.monotonic() + self.retry_s
            if first:
                log.warning(
                    "kvstore at %s: %s failed, the engine carries on without it for %.0f s: %s",
                    self.address,
                    what,
                    self.retry_s,
                    exc,
                )
            return default
        if self._resting_until:
            with self._lock:
                if self._resting_until:
                    log.info("kvstore at %s reachable again", self.address)
                    self._resting_until = 0.0
        return result
