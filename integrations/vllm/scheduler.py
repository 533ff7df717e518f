"""The connector's scheduler side: what kvstore holds beyond the engine's prefix cache, which
engine blocks to load it into, and which blocks to save when a request finishes.

Keys are vLLM's own block hashes (`request.block_hashes`, sha256 by default: the same in every
engine process and across restarts), sent as opaque kvstore keys with their parents, so kvstore
never needs the tokens. Loads are synchronous (see `connector.py` for why); saves are
asynchronous: a finished request's blocks stay held until the worker reports them saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kvstore.integrations.vllm.settings import ConnectorSettings, Guard, log, request_session
from kvstore.sdk import Client

from kvstore.hashing import opaque_key


@dataclass(frozen=True)
class LoadSpec:
    req_id: str
    keys: list[bytes]
    block_ids: list[int]
    session: str | None


@dataclass(frozen=True)
class SaveSpec:
    req_id: str
    keys: list[bytes]  # the whole chain of the request's full blocks, from its first block
    block_ids: list[int]
    session: str | None


@dataclass
class StepPlan:
    """What the worker does in one engine step (vLLM's connector metadata carries it)."""

    loads: list[LoadSpec] = field(default_factory=list)
    saves: list[SaveSpec] = field(default_factory=list)


def store_key(block_hash: Any) -> bytes:
    """kvstore key of a vLLM block hash (32-byte sha256 hashes are kept as they are)."""
    return opaque_key(bytes(block_hash))


class SchedulerSide:
    def __init__(self, settings: ConnectorSettings, block_size: int, block_bytes: int) -> None:
        self.settings = settings
        self.block_size = block_size
        self.block_bytes = block_bytes
        # The scheduler only asks how much is stored: no block bytes, so no shared memory.
        self.client = Client(settings.address, timeout=settings.timeout_s, shared_memory=False)
        self.guard = Guard(settings.address, settings.retry_s)
        self._checked = False
        self._disabled = False  # the namespace holds blocks of another size: nothing to do
        self._hits: dict[str, tuple[int, int]] = {}  # req_id -> (first block, blocks) kvstore holds
        self._loads: dict[str, LoadSpec] = {}
        self._saves: list[SaveSpec] = []

    def _usable(self) -> bool:
        """The namespace exists and holds blocks of this engine's size (checked once)."""
        if self._checked or self._disabled:
            return self._checked
        info = self.guard.call(
            "describe namespace", lambda: self.client.namespace(self.settings.namespace), None
        )
        if info is None:
            return False
        if info.block_bytes != self.block_bytes:
            log.error(
                "kvstore namespace %r stores %d-byte blocks but this engine's blocks are %d bytes (all "
                "layers): the connector stays off. Set block_bytes: %d and block_tokens: %d for it in "
                "the kvstore config",
                self.settings.namespace,
                info.block_bytes,
                self.block_bytes,
                self.block_bytes,
                self.block_size,
            )
            self._disabled = True
            return False
        self._checked = True
        return True

    def matched_tokens(self, request: Any, num_computed_tokens: int) -> int:
        """Tokens kvstore holds right after the engine's own `num_computed_tokens`."""
        self._hits.pop(request.request_id, None)
        if not self.settings.load or self.guard.resting:
            return 0
        # At least one token must be computed by the engine, so the last one is never loaded.
        limit = min(len(request.block_hashes), (request.num_tokens - 1) // self.block_size)
        start = num_computed_tokens // self.block_size
        if start >= limit or not self._usable():
            return 0
        keys = [store_key(h) for h in request.block_hashes[start:limit]]
        found = self.guard.call(
            "lookup",
            lambda: self.client.lookup(self.settings.namespace, keys=keys).prefix_blocks,
            0,
        )
        if found:
            self._hits[request.request_id] = (start, found)
        return found * self.block_size

    def allocated(self, request: Any, block_ids: list[int], num_external_tokens: int) -> None:
        """Blocks were allocated for `request`: plan the load of what kvstore holds into them."""
        hit = self._hits.pop(request.request_id, None)
        if hit is None or num_external_tokens <= 0:
            return
        start, _ = hit
        n = num_external_tokens // self.block_size
        session, warm = request_session(request.kv_transfer_params, self.settings.session_key)
        self._loads[request.request_id] = LoadSpec(
            request.request_id,
            [store_key(h) for h in request.block_hashes[start : start + n]],
            block_ids[start : start + n],
            None if warm else session,
        )

    def finished(self, request: Any, block_ids: list[int]) -> bool:
        """A request finished: plan the save of its full blocks. True: hold them until saved."""
        session, warm = request_session(request.kv_transfer_params, self.settings.session_key)
        if warm or not self.settings.save or self.guard.resting or not self._usable():
            return False  # a warm request's prompt was stored already: it only loads
        # The last sampled token has no KV yet: only computed tokens count.
        n = min(len(request.block_hashes), request.num_computed_tokens // self.block_size, len(block_ids))
        if n <= 0:
            return False
        keys = [store_key(h) for h in request.block_hashes[:n]]
        self._saves.append(SaveSpec(request.request_id, keys, list(block_ids[:n]), session))
        return True

    def step_plan(self) -> StepPlan:
        plan = StepPlan(list(self._loads.values()), self._saves)
        self._loads, self._saves = {}, []
        return plan

    def close(self) -> None:
        self.client.close()
