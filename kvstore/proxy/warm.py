"""Warm requests: the session's last request sent again for one token, so the engine's connector
loads the session's KV back into HBM before the agent's next real request (DESIGN §1).

The engine answers with one token after reading the prompt's KV (from kvstore, through its
connector); the answer is discarded. What decides *when* is kvstore's plan stream (a `WatchPlans`
subscription, to come): the subscriber calls `Warmer.warm(session_id)` when a session's KV should
be back, i.e. a little before its tool is expected to return.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from kvstore.proxy.answers import CHAT, RESPONSES
from kvstore.proxy.tagging import FIELD, SESSION_KEY, transfer_params
from kvstore.proxy.tracker import LastRequest, Tracker

log = logging.getLogger("kvstore.proxy")

# Request headers a warm request carries again: what the upstream needs to accept it.
KEPT_HEADERS = (
    "authorization",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "openai-organization",
    "openai-project",
)


@dataclass(frozen=True, slots=True)
class WarmResult:
    session: str
    status: int | None  # the upstream's HTTP status; None when nothing was sent or it was unreachable
    seconds: float
    detail: str = ""


def one_token(request: LastRequest) -> dict[str, Any]:
    """The request's body, asking for one token, not streamed, one choice."""
    body = dict(request.body)
    for field in ("stream", "stream_options", "best_of"):
        body.pop(field, None)
    if request.kind == RESPONSES:
        body["max_output_tokens"] = 1
    elif request.kind == CHAT and "max_completion_tokens" in body:
        body["max_completion_tokens"] = 1
    else:  # chat, completions, messages
        body["max_tokens"] = 1
    if "n" in body:
        body["n"] = 1
    return body


class Warmer:
    def __init__(
        self,
        client: aiohttp.ClientSession,
        upstream: str,
        tracker: Tracker,
        session_keys: Sequence[str] = (SESSION_KEY,),
    ) -> None:
        self.client = client
        self.upstream = upstream  # base URL, no trailing slash: the request's path is appended
        self.tracker = tracker
        self.session_keys = tuple(session_keys)

    async def warm(self, session_id: str, timeout_s: float = 60.0) -> WarmResult:
        """Send the session's last request again for one token; never raises (it is advisory)."""
        started = time.monotonic()
        last = self.tracker.last_request(session_id)
        if last is None:
            return WarmResult(session_id, None, 0.0, "no request of this session seen yet")
        body = one_token(last)
        if self.session_keys:
            body[FIELD] = transfer_params(body.get(FIELD), session_id, self.session_keys)
        headers = {**last.headers, "content-type": "application/json"}
        try:
            async with self.client.post(
                self.upstream + last.path,
                data=json.dumps(body),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as reply:
                await reply.read()
                detail = "" if reply.status < 400 else f"upstream answered {reply.status}"
                return WarmResult(session_id, reply.status, time.monotonic() - started, detail)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("warm request for session %s failed: %r", session_id, exc)
            return WarmResult(session_id, None, time.monotonic() - started, repr(exc))
