"""What an engine's answer means for the session: it asks for tools, it ends the turn, or neither.

One reader per API (OpenAI chat completions, completions and responses; Anthropic messages), fed
the answer's bytes as they are forwarded: a JSON body, or a server-sent-event stream read event by
event. Only events that can carry a tool call or a finish reason are decoded, so a long stream of
text deltas costs a substring test per event.

An answer whose stop reason says the turn is over (`stop`, `end_turn`, `stop_sequence`, a
completed response) ends the turn; one cut short (`length`, `max_tokens`, `pause_turn`,
`content_filter`) does neither: the agent is likely to go on at once.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_JSON_ANSWER = 16 * 2**20  # a non-streamed answer is read for hints up to this size
MAX_EVENT = 2**20  # a streamed event longer than this is skipped

CHAT, COMPLETIONS, MESSAGES, RESPONSES = "chat", "completions", "messages", "responses"
_END_REASONS = {"stop", "end_turn", "stop_sequence", "completed"}
_FINISH_REASON = re.compile(rb'"(?:finish_reason|stop_reason)"\s*:\s*"')


@dataclass(frozen=True, slots=True)
class Outcome:
    tools: tuple[str, ...] = ()  # the tools the answer asks for, in order
    ended_turn: bool = False


class Reader:
    """Collects tool names and the stop reason from the answer's parts (decoded JSON objects)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.tools: dict[tuple[int, int], str] = {}  # (choice, call index) -> name, in order
        self.reason: str | None = None
        self._read: Callable[[Mapping[str, Any]], None] = getattr(self, f"_{kind}")

    def outcome(self) -> Outcome:
        names = tuple(name for name in self.tools.values() if name)
        if names:
            return Outcome(tools=names)
        return Outcome(ended_turn=self.reason in _END_REASONS)

    def read(self, part: Any) -> None:
        if isinstance(part, Mapping):
            # an odd answer yields no hint; the client still gets it as it came
            with contextlib.suppress(TypeError, ValueError):
                self._read(part)

    def _add(self, key: tuple[int, int], name: Any, streamed: bool = False) -> None:
        """A tool's name; streamed, it may come in pieces (or, from some servers, again whole)."""
        if isinstance(name, str) and name:
            before = self.tools.get(key, "")
            self.tools[key] = before + name if streamed and name != before else name

    def _chat(self, part: Mapping[str, Any]) -> None:
        for c, choice in enumerate(_list(part.get("choices"))):
            if not isinstance(choice, Mapping):
                continue
            index = choice.get("index", c)
            message = choice.get("message") or choice.get("delta") or {}
            streamed = "delta" in choice
            for i, call in enumerate(_list(message.get("tool_calls"))):
                if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
                    self._add((index, call.get("index", i)), call["function"].get("name"), streamed)
            legacy = message.get("function_call")
            if isinstance(legacy, Mapping):
                self._add((index, -1), legacy.get("name"), streamed)
            if isinstance(choice.get("finish_reason"), str):
                self.reason = choice["finish_reason"]

    def _completions(self, part: Mapping[str, Any]) -> None:
        for choice in _list(part.get("choices")):
            if isinstance(choice, Mapping) and isinstance(choice.get("finish_reason"), str):
                self.reason = choice["finish_reason"]

    def _messages(self, part: Mapping[str, Any]) -> None:
        kind = part.get("type")
        if kind == "content_block_start":  # stream
            block = part.get("content_block")
            if isinstance(block, Mapping) and block.get("type") == "tool_use":
                self._add((0, int(part.get("index", len(self.tools)))), block.get("name"))
        elif kind == "message_delta":  # stream
            delta = part.get("delta")
            if isinstance(delta, Mapping) and isinstance(delta.get("stop_reason"), str):
                self.reason = delta["stop_reason"]
        elif kind == "message":  # a whole answer
            for i, block in enumerate(_list(part.get("content"))):
                if isinstance(block, Mapping) and block.get("type") == "tool_use":
                    self._add((0, i), block.get("name"))
            if isinstance(part.get("stop_reason"), str):
                self.reason = part["stop_reason"]

    def _responses(self, part: Mapping[str, Any]) -> None:
        if part.get("type") in ("response.completed", "response.incomplete"):  # stream: the whole answer
            part = part.get("response") or {}
        for i, item in enumerate(_list(part.get("output"))):
            if isinstance(item, Mapping) and item.get("type") in ("function_call", "custom_tool_call"):
                self._add((0, i), item.get("name"))
        if isinstance(part.get("status"), str):
            self.reason = part["status"]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class JsonAnswer:
    """A whole (non-streamed) answer: buffered up to MAX_JSON_ANSWER, decoded at the end."""

    def __init__(self, kind: str) -> None:
        self.reader = Reader(kind)
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= MAX_JSON_ANSWER:
            self._parts.append(chunk)

    def outcome(self) -> Outcome | None:
        if self._size > MAX_JSON_ANSWER:
            return None
        try:
            self.reader.read(json.loads(b"".join(self._parts)))
        except ValueError:
            return None
        return self.reader.outcome()


class EventStream:
    """A server-sent-event answer, read event by event as its chunks pass through."""

    # Events that can carry a tool name or the stop reason; the rest (text deltas) are skipped.
    _NAMED = {
        MESSAGES: {b"content_block_start", b"message_delta"},
        RESPONSES: {b"response.completed", b"response.incomplete"},
    }

    def __init__(self, kind: str) -> None:
        self.reader = Reader(kind)
        self._buffer = b""
        self._named = self._NAMED.get(kind)

    def feed(self, chunk: bytes) -> None:
        self._buffer = (self._buffer + chunk).replace(b"\r\n", b"\n")
        *events, self._buffer = self._buffer.split(b"\n\n")
        if len(self._buffer) > MAX_EVENT:
            self._buffer = b""
        for event in events:
            self._event(event)

    def _event(self, event: bytes) -> None:
        name, data = b"", []
        for line in event.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip()
            elif line.startswith(b"data:"):
                data.append(line[5:].strip())
        payload = b"\n".join(data)
        if not payload or payload == b"[DONE]" or not self._wanted(name, payload):
            return
        with contextlib.suppress(ValueError):  # not ours to judge: the client gets the bytes as they came
            self.reader.read(json.loads(payload))

    def _wanted(self, name: bytes, payload: bytes) -> bool:
        if self._named is not None:
            return name in self._named if name else True
        return b"tool_calls" in payload or b"function_call" in payload or bool(_FINISH_REASON.search(payload))

    def outcome(self) -> Outcome | None:
        if self._buffer.strip():
            self._event(self._buffer)
            self._buffer = b""
        return self.reader.outcome() if self.reader.tools or self.reader.reason else None


def answer_reader(kind: str, content_type: str) -> JsonAnswer | EventStream:
    if content_type.startswith("text/event-stream"):
        return EventStream(kind)
    return JsonAnswer(kind)
