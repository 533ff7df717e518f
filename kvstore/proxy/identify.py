"""Which session a chat request belongs to, and how long its sender wants its prefix kept.

The session, first found wins:
1. `x-session-id` (ours: any client can set it);
2. the harnesses' own headers: `x-claude-code-session-id` (Claude Code >= 2.1.86), `session-id`
   and `session_id` (Codex CLI, new and old spelling), `conversation_id` (older Codex),
   `x-opencode-session` (OpenCode), `x-session-affinity` (sticky-routing clients);
3. OpenAI `prompt_cache_key` (Codex and the OpenAI Agents SDK set it per conversation);
4. Anthropic `metadata.user_id`: the session part of Claude Code's value (older versions send
   `user_<hash>_account_<id>_session_<uuid>`, newer ones a JSON object with `session_id`),
   else the whole value;
5. OpenAI `user` (an end user rather than a conversation: the coarsest grouping).

Retention, from what senders already say about caching (DESIGN: hints are about sessions):
Anthropic `cache_control` breakpoints keep a prefix 5 minutes (`"ttl": "5m"`, the default) or an
hour (`"1h"`); OpenAI `prompt_cache_retention` is `"in_memory"` (5-10 minutes idle, at most an
hour: we take 10 minutes) or `"24h"`. The proxy maps the longest one onto the session's lifetime:
once the session has been idle that long after an answer, the proxy closes it in kvstore, so its
blocks are no longer held for it and leave the fast tiers first. Without one, kvstore's own idle
expiry applies.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

# The longest id kvstore takes (kvstore.hints.MAX_ID, not imported: it pulls in the whole store).
MAX_ID = 256
SESSION_HEADERS = (
    "x-session-id",
    "x-claude-code-session-id",
    "session-id",
    "session_id",
    "conversation_id",
    "x-opencode-session",
    "x-session-affinity",
)
_CLAUDE_CODE_USER = re.compile(r"_session_([0-9A-Za-z-]+)$")

ANTHROPIC_TTL_S = {"5m": 300.0, "1h": 3600.0}
OPENAI_RETENTION_S = {"in_memory": 600.0, "24h": 86400.0}


def session_id(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """The request's session, or None when nothing names one."""
    for name in SESSION_HEADERS:
        found = _clean(headers.get(name))
        if found:
            return found
    found = _clean(body.get("prompt_cache_key"))
    if found:
        return found
    metadata = body.get("metadata")
    if isinstance(metadata, Mapping):
        found = _claude_code_session(metadata.get("user_id"))
        if found:
            return found
    return _clean(body.get("user"))


def _claude_code_session(user_id: Any) -> str | None:
    if not isinstance(user_id, str):
        return None
    if user_id.startswith("{"):
        try:
            parsed = json.loads(user_id)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and _clean(parsed.get("session_id")):
            return _clean(parsed["session_id"])
    match = _CLAUDE_CODE_USER.search(user_id)
    return _clean(match.group(1) if match else user_id)


def _clean(value: Any) -> str | None:
    """A usable session id: a non-empty string; one longer than kvstore takes is hashed."""
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    if len(value) > MAX_ID:
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    return value


def retention_s(body: Mapping[str, Any]) -> float | None:
    """Seconds the sender asked its prefix to be kept, or None when it said nothing."""
    kept = [OPENAI_RETENTION_S[r] for r in [body.get("prompt_cache_retention")] if r in OPENAI_RETENTION_S]
    for control in _cache_controls(body):
        ttl = control.get("ttl", "5m")
        kept.append(ANTHROPIC_TTL_S.get(ttl, ANTHROPIC_TTL_S["5m"]) if isinstance(ttl, str) else 300.0)
    return max(kept, default=None)


def _cache_controls(body: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """`cache_control` objects where Anthropic takes them: top level, system, tools, message blocks."""
    blocks: list[Any] = [body]
    for field in ("system", "tools"):
        if isinstance(body.get(field), list):
            blocks += body[field]
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping) and isinstance(message.get("content"), list):
                blocks += message["content"]
    for block in blocks:
        control = block.get("cache_control") if isinstance(block, Mapping) else None
        if isinstance(control, Mapping):
            yield control
