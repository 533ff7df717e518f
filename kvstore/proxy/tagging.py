"""The engine side: the session goes into the request's `kv_transfer_params` (as `session_id`, the
name kvstore's engine connectors read), which vLLM hands to its KV connector, so the KV the engine
stores and loads for the request is tagged with the agent's session.

LMCache keeps only `lmcache.*` keys there, as request configs its storage plugin sees; kvstore's
LMCache plugin reads `lmcache.kvstore.session_id` (`kvstore proxy --session-key
lmcache.kvstore.session_id`). Not an `lmcache.tag.*` key: tags are part of LMCache's chunk key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

FIELD = "kv_transfer_params"
SESSION_KEY = "session_id"


def transfer_params(existing: Any, session_id: str, keys: Sequence[str] = (SESSION_KEY,)) -> dict[str, Any]:
    """The client's own kv_transfer_params (when an object), with the session added."""
    return {**(existing if isinstance(existing, Mapping) else {}), **dict.fromkeys(keys, session_id)}


def tag_body(
    raw: bytes, body: Mapping[str, Any], session_id: str, keys: Sequence[str] = (SESSION_KEY,)
) -> bytes:
    """`raw` (the JSON object `body` was decoded from) with the session in kv_transfer_params.

    When the body has no kv_transfer_params, the field is put in front of the client's bytes, which
    pass on untouched; otherwise the body is encoded again with the session merged in."""
    if FIELD not in body and body and json.detect_encoding(raw) == "utf-8":
        start = raw.index(b"{") + 1
        field = json.dumps({FIELD: transfer_params(None, session_id, keys)})[1:-1].encode()
        return raw[:start] + field + b"," + raw[start:]
    return json.dumps({**body, FIELD: transfer_params(body.get(FIELD), session_id, keys)}).encode()
