"""Hints from chat traffic: each session's requests and answers become kvstore hints.

- a request of a session whose last answer asked for tools: that tool call is over (EndToolCall);
- an answer that asks for tools: BeginToolCall, named after the tool (several tools at once: one
  call named after them all, e.g. `grep+run_tests`); no duration is given, so kvstore expects
  what calls of that name took before;
- an answer that ends the turn: AwaitingUser;
- a retention the sender asked for (`identify.retention_s`) and passed with no new request: the
  session is closed in kvstore.

The tracker also keeps each session's last request, for a warm request (`warm.py`).
All of it is advisory: hints are queued on the SDK's sender and never fail a request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kvstore.proxy.answers import Outcome
from kvstore.sdk import AsyncAgentSession, HintSender, SessionPool

MAX_TOOL_NAME = 256  # kvstore takes tool names up to this long (kvstore.hints.MAX_ID)


@dataclass(frozen=True, slots=True)
class LastRequest:
    """A session's latest chat request, as the client sent it (before the proxy's additions)."""

    kind: str  # answers.CHAT, COMPLETIONS, MESSAGES or RESPONSES
    path: str  # with the query string
    body: Mapping[str, Any]
    headers: Mapping[str, str]  # what the upstream needs to accept it again (credentials, versions)


@dataclass(slots=True)
class Conversation:
    hints: AsyncAgentSession
    tool_call: str | None = None  # the tool call the last answer began, until the next request
    last: LastRequest | None = None
    retention_s: float | None = None
    requests: int = 0  # in flight now
    idle_since: float | None = None  # when the last answer ended (None while a request runs)


def tool_name(tools: tuple[str, ...]) -> str:
    """One kvstore tool call for the answer's tools: their distinct names, in order, joined."""
    return "+".join(dict.fromkeys(tools))[:MAX_TOOL_NAME]


class Tracker:
    def __init__(
        self,
        address: str,
        namespace: str = "default",
        timeout: float = 2.0,
        max_sessions: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.namespace = namespace
        self.sender = HintSender.shared(address, timeout)
        self.clock = clock
        self.sessions: SessionPool[Conversation] = SessionPool(self._open, max_sessions)

    def _open(self, session_id: str) -> Conversation:
        return Conversation(
            AsyncAgentSession(session_id=session_id, namespace=self.namespace, sender=self.sender)
        )

    def request(self, session_id: str, last: LastRequest, retention_s: float | None) -> Conversation:
        """A request of the session starts."""
        conv = self.sessions.get(session_id)
        if conv.tool_call is not None:
            conv.hints.end_tool_call(conv.tool_call)
            conv.tool_call = None
        conv.last = last
        if retention_s is not None:
            conv.retention_s = retention_s
        conv.requests += 1
        conv.idle_since = None
        return conv

    def answered(self, conv: Conversation, outcome: Outcome | None) -> None:
        """The request's answer reached the client (`outcome` None: nothing to learn from it)."""
        conv.requests -= 1
        if conv.requests == 0:
            conv.idle_since = self.clock()
        if outcome is None:
            return
        if outcome.tools:
            if conv.tool_call is not None:  # a concurrent request of the session asked for tools too
                conv.hints.end_tool_call(conv.tool_call)
            conv.tool_call = conv.hints.begin_tool_call(tool_name(outcome.tools))
        elif outcome.ended_turn and conv.tool_call is None:
            conv.hints.awaiting_user()

    def last_request(self, session_id: str) -> LastRequest | None:
        conv = self.sessions.peek(session_id)
        return conv.last if conv is not None else None

    async def expire(self) -> list[str]:
        """Close the sessions idle for longer than the retention their sender asked for."""
        now = self.clock()
        expired = [
            sid
            for sid, conv in self.sessions.items()
            if conv.retention_s is not None
            and conv.idle_since is not None
            and now - conv.idle_since > conv.retention_s
        ]
        closing = [conv for conv in map(self.sessions.pop, expired) if conv is not None]
        await asyncio.gather(*(conv.hints.close() for conv in closing))
        return expired
