"""Readers for the replay's traces (format: ../shared/traces/README.md).

- agentic: one JSON session per file, requests with timing, tool structure and block ids; nested
  `subagent` entries carry sessions that run inside their parent.
- mooncake: JSONL, one standalone request per line, block ids shared across the file, no
  sessions and no tool structure.

A malformed trace raises TraceError naming the file, the request (or line) and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class TraceError(ValueError):
    pass


@dataclass(slots=True)
class Request:
    t: float  # seconds since its session started (the sender's clock)
    in_tokens: int
    out_tokens: int
    hash_ids: list[int]
    stop: str  # "tool_use", "end_turn", or "" (not recorded)
    api_time: float | None  # how long the server took; absent on some streaming requests
    think_time: float | None  # the client's gap before this request; absent on some


def gaps(requests: list[Request], decode_tps: float) -> list[tuple[float, float]]:
    """(hold, think) per request: how long it runs on the server, and the client's gap after it
    before the next one. Where a timing field is absent, follow the format's own replayer: the
    gap between consecutive `t` values covers both (the hold estimated from the output length at
    `decode_tps`, never longer than that gap)."""
    out = []
    for i, r in enumerate(requests):
        hold = r.api_time if r.api_time is not None else r.out_tokens / decode_tps
        if i + 1 == len(requests):
            out.append((hold, 0.0))
            continue
        nxt = requests[i + 1]
        if r.api_time is not None and nxt.think_time is not None:
            out.append((hold, nxt.think_time))
        else:
            span = max(0.0, nxt.t - r.t)
            hold = min(hold, span)
            out.append((hold, span - hold))
    return out


@dataclass(slots=True)
class TraceSession:
    """A session: its requests, and subagent sessions started after request `after` (-1: first)."""

    id: str
    requests: list[Request]
    subagents: list[tuple[int, float, TraceSession]] = field(default_factory=list)
    block_tokens: int = 64
    scope: str = ""  # block ids are comparable only within one scope (one file)


@dataclass(slots=True)
class Trace:
    path: Path
    kind: str  # "agentic" or "mooncake"
    sessions: list[TraceSession]
    has_hints: bool  # tool structure to derive hints from


def _need(obj: dict[str, Any], key: str, kinds: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise TraceError(f"{where}: missing field {key!r}")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TraceError(f"{where}: field {key!r} must be {getattr(kinds, '__name__', kinds)}, got {value!r}")
    if isinstance(value, (int, float)) and value < 0:
        raise TraceError(f"{where}: field {key!r} must be >= 0, got {value}")
    return value


def _optional_seconds(obj: dict[str, Any], key: str, where: str) -> float | None:
    """A timing field the format allows to be absent (or null)."""
    if obj.get(key) is None:
        return None
    return float(_need(obj, key, (int, float), where))


def _hash_ids(obj: dict[str, Any], where: str) -> list[int]:
    ids = _need(obj, "hash_ids", list, where)
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TraceError(f"{where}: field 'hash_ids' must be a list of integers")
    return ids


def _agentic_session(raw: list[Any], path: Path, sid: str, block_tokens: int, where: str) -> TraceSession:
    session = TraceSession(sid, [], block_tokens=block_tokens, scope=str(path))
    for i, r in enumerate(raw):
        at = f"{where} request {i}"
        if not isinstance(r, dict):
            raise TraceError(f"{at}: must be an object")
        if r.get("type") == "subagent":
            nested = _need(r, "requests", list, at)
            sub = _agentic_session(
                nested, path, f"{sid}/{r.get('agent_id', i)}", block_tokens, f"{at} (subagent)"
            )
            session.subagents.append((len(session.requests) - 1, float(_need(r, "t", (int, float), at)), sub))
            continue
        stop = r.get("stop", "")
        if not isinstance(stop, str):
            raise TraceError(f"{at}: field 'stop' must be a string")
        session.requests.append(
            Request(
                t=float(_need(r, "t", (int, float), at)),
                in_tokens=_need(r, "in", int, at),
                out_tokens=_need(r, "out", int, at),
                hash_ids=_hash_ids(r, at),
                stop=stop,
                api_time=_optional_seconds(r, "api_time", at),
                think_time=_optional_seconds(r, "think_time", at),
            )
        )
    return session


def read_agentic(path: Path) -> Trace:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise TraceError(f"{path}: not valid JSON (line {exc.lineno}): {exc.msg}") from None
    if not isinstance(doc, dict):
        raise TraceError(f"{path}: must hold one JSON object (an agentic session)")
    block_tokens = _need(doc, "block_size", int, str(path))
    if block_tokens < 1:
        raise TraceError(f"{path}: field 'block_size' must be >= 1")
    requests = _need(doc, "requests", list, str(path))
    session = _agentic_session(requests, path, str(doc.get("id", path.stem)), block_tokens, str(path))
    if not session.requests:
        raise TraceError(f"{path}: no requests")
    return Trace(path, "agentic", [session], has_hints=True)


def read_mooncake(path: Path, block_tokens: int = 512) -> Trace:
    sessions = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            at = f"{path} line {n}"
            try:
                r = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TraceError(f"{at}: not valid JSON: {exc.msg}") from None
            if not isinstance(r, dict):
                raise TraceError(f"{at}: must be an object")
            request = Request(
                t=_need(r, "timestamp", (int, float), at) / 1000.0,
                in_tokens=_need(r, "input_length", int, at),
                out_tokens=_need(r, "output_length", int, at),
                hash_ids=_hash_ids(r, at),
                stop="",
                api_time=None,
                think_time=None,
            )
            sessions.append(
                TraceSession(f"{path.stem}:{n}", [request], block_tokens=block_tokens, scope=str(path))
            )
    if not sessions:
        raise TraceError(f"{path}: no requests")
    return Trace(path, "mooncake", sessions, has_hints=False)


def read_trace(path: Path) -> Trace:
    """Read a trace file (or every trace file of a folder is up to the caller), by its format."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file")
    if path.suffix == ".jsonl":
        return read_mooncake(path)
    if path.suffix == ".json":
        return read_agentic(path)
    raise TraceError(
        f"{path}: unknown trace format (expected .json agentic sessions or .jsonl Mooncake requests)"
    )


def expand(paths: list[Path]) -> list[Path]:
    """Files as given, folders as their .json/.jsonl files (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.suffix in (".json", ".jsonl"))
            if not found:
                raise TraceError(f"{p}: folder holds no .json or .jsonl traces")
            out += found
        else:
            out.append(p)
    return out
