"""Engine blocks <-> kvstore blocks: the bytes of one vLLM block across all layers, and the copies.

One kvstore block is one vLLM block (`block_size` tokens) of every attention layer, laid out layer
after layer in a fixed order (sorted layer names), each layer's part being that layer's page for
the block. So a block read back restores every layer, and the namespace's `block_bytes` is the
engine's per-block KV size over all layers.

No vLLM import here: only the paged KV tensors vLLM registers (one per layer), so the benchmark
can drive the same copies on a cache of the same layout without starting an engine.

Copies: next to the server (shared memory) and on a cache whose block pages are contiguous (the
CPU backend's layout), each layer's pages go straight between the paged KV cache and the kvstore
slots: a save is one Reserve, one copy per (run of blocks consecutive in the engine and in shared
memory, layer), one Commit; a load one Acquire, the same copies the other way, one Release. One
copy per byte each way. Otherwise (gRPC, other layouts, a slot kvstore had no room for) the blocks
go through a staging buffer: gathered per layer into it, then copied by the SDK into the slots (a
load is the mirror image): two copies per byte.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from kvstore.sdk import Client, core, shm
from kvstore.sdk.base import Op, Rpc

from kvstore.v1 import kvstore_pb2 as pb


@dataclass(frozen=True)
class LayerPage:
    name: str
    tensor: torch.Tensor
    block_dim: int  # the dimension of `tensor` that indexes blocks
    nbytes: int  # bytes of one block of this layer
    offset: int  # where this layer's part starts within a kvstore block
    # (num_blocks, nbytes) bytes of the layer when each block's page is contiguous (blocks first,
    # as on the CPU backend): copies then run on bytes, several times faster than on bf16 elements.
    pages: torch.Tensor | None


class KVLayout:
    """The engine's paged KV cache seen as kvstore blocks."""

    def __init__(self, kv_caches: Mapping[str, torch.Tensor], num_blocks: int) -> None:
        if not kv_caches:
            raise ValueError("no KV cache tensors to lay out")
        layers: list[LayerPage] = []
        offset = 0
        for name in sorted(kv_caches):  # sorted: the same order in every process, every restart
            tensor = kv_caches[name]
            dim = _block_dim(tensor, num_blocks, name)
            nbytes = tensor.numel() // num_blocks * tensor.element_size()
            pages = None
            if dim == 0 and tensor.is_contiguous():
                pages = tensor.view(num_blocks, -1).view(torch.uint8)
            layers.append(LayerPage(name, tensor, dim, nbytes, offset, pages))
            offset += nbytes
        self.layers = layers
        self.block_bytes = offset
        self.num_blocks = num_blocks
        # Every layer's block pages contiguous: pages can be copied straight to and from slots.
        self.direct = all(layer.pages is not None for layer in layers)

    def to_slots(self, first: int, slots: torch.Tensor) -> None:
        """Copy engine blocks first.. into `slots` (n, block_bytes): one copy per layer."""
        n = len(slots)
        for layer in self.layers:
            assert layer.pages is not None
            slots[:, layer.offset : layer.offset + layer.nbytes].copy_(layer.pages[first : first + n])

    def from_slots(self, slots: torch.Tensor, first: int) -> None:
        """Copy `slots` (n, block_bytes) into engine blocks first..: one copy per layer."""
        n = len(slots)
        for layer in self.layers:
            assert layer.pages is not None
            layer.pages[first : first + n].copy_(slots[:, layer.offset : layer.offset + layer.nbytes])

    def staging(self, n: int) -> torch.Tensor:
        """A (n, block_bytes) byte buffer: row i is kvstore block i."""
        return torch.empty((n, self.block_bytes), dtype=torch.uint8)

    def gather(self, block_ids: Sequence[int], out: torch.Tensor) -> None:
        """Copy engine blocks `block_ids` into the rows of `out`."""
        ids = torch.as_tensor(list(block_ids), dtype=torch.long)
        n = len(ids)
        runs = _runs(block_ids)
        for layer in self.layers:
            if layer.pages is not None:
                part = out[:, layer.offset : layer.offset + layer.nbytes]
                for at, first, length in runs:
                    part[at : at + length].copy_(layer.pages[first : first + length])
                continue
            pages = layer.tensor.index_select(layer.block_dim, ids)
            if layer.block_dim:
                pages = pages.movedim(layer.block_dim, 0)
            out[:, layer.offset : layer.offset + layer.nbytes].copy_(
                pages.contiguous().view(torch.uint8).reshape(n, layer.nbytes)
            )

    def scatter(self, rows: torch.Tensor, block_ids: Sequence[int]) -> None:
        """Copy the rows of `rows` (kvstore blocks) into engine blocks `block_ids`."""
        ids = torch.as_tensor(list(block_ids), dtype=torch.long)
        runs = _runs(block_ids)
        for layer in self.layers:
            if layer.pages is not None:
                part = rows[:, layer.offset : layer.offset + layer.nbytes]
                for at, first, length in runs:
                    layer.pages[first : first + length].copy_(part[at : at + length])
                continue
            shape = list(layer.tensor.shape)
            shape.pop(layer.block_dim)
            pages = (
                rows[:, layer.offset : layer.offset + layer.nbytes]
                .contiguous()
                .view(layer.tensor.dtype)
                .reshape(len(ids), *shape)
            )
            if layer.block_dim:
                pages = pages.movedim(0, layer.block_dim)
            layer.tensor.index_copy_(layer.block_dim, ids, pages)


def _runs(block_ids: Sequence[int]) -> list[tuple[int, int, int]]:
    """(position, first block, length) of each run of consecutive block ids: a request's blocks are
    mostly allocated in runs, and a slice copy is several times faster than an indexed one."""
    runs: list[tuple[int, int, int]] = []
    for i, block in enumerate(block_ids):
        if runs and runs[-1][1] + runs[-1][2] == block:
            at, first, length = runs[-1]
            runs[-1] = (at, first, length + 1)
        else:
            runs.append((i, block, 1))
    return runs


def _slot_runs(
    block_ids: Sequence[int], places: Sequence[tuple[int, int] | None], size: int
) -> list[tuple[int, int, int]]:
    """(position, first block, length) of runs of blocks consecutive both in the engine and in one
    shared segment (`places`: (segment, offset) of each block, None to skip it): each run is then
    one strided copy per layer."""
    runs: list[tuple[int, int, int]] = []
    for i, (block, place) in enumerate(zip(block_ids, places, strict=True)):
        if place is None:
            continue
        if runs:
            at, first, length = runs[-1]
            prev = places[at + length - 1] if at + length == i else None
            if prev is not None and first + length == block and prev == (place[0], place[1] - size):
                runs[-1] = (at, first, length + 1)
                continue
        runs.append((i, block, 1))
    return runs


def _block_dim(tensor: torch.Tensor, num_blocks: int, name: str) -> int:
    # CPU and most GPU backends put blocks first; FlashAttention-style (2, num_blocks, ...) second.
    for dim in (0, 1):
        if tensor.dim() > dim and tensor.shape[dim] == num_blocks:
            return dim
    raise ValueError(
        f"KV cache of layer {name} has shape {tuple(tensor.shape)}: no dimension of {num_blocks} blocks"
    )


@dataclass
class Traffic:
    """Bytes and seconds of loads and saves, for logs and the benchmark."""

    loaded_bytes: int = 0
    load_s: float = 0.0
    saved_bytes: int = 0
    save_s: float = 0.0


class BlockTransfer:
    """Loads and saves of engine blocks through a kvstore client (shared memory on the same host).

    Each direction has a staging buffer of at most `staging_bytes`, allocated once and reused (fresh
    memory costs page faults on every touch, more than the copies); longer chains go in rounds.
    Loads (the engine's thread) and saves (the saver thread) never share a buffer."""

    def __init__(
        self, layout: KVLayout, client: Client, namespace: str, staging_bytes: int = 256 * 2**20
    ) -> None:
        self.layout = layout
        self.client = client
        self.namespace = namespace
        self.round_blocks = max(1, staging_bytes // layout.block_bytes)
        self._staging: dict[str, torch.Tensor] = {}
        self.traffic = Traffic()

    def _rows(self, direction: str, n: int) -> torch.Tensor:
        buffer = self._staging.get(direction)
        if buffer is None or len(buffer) < n:
            buffer = self._staging[direction] = self.layout.staging(max(n, min(self.round_blocks, 2 * n)))
        return buffer[:n]

    def _segments(self) -> shm.Segments | None:
        """The server's shared segments when pages can go straight to and from slots."""
        if not self.layout.direct:
            return None
        return self.client._run(self.client._shared())

    def load(self, keys: Sequence[bytes], block_ids: Sequence[int], session: str | None) -> int:
        """Read blocks `keys` into engine blocks `block_ids`; returns how many leading blocks were
        loaded (the rest were not stored any more and must be recomputed)."""
        started = time.perf_counter()
        loaded = 0
        for at in range(0, len(keys), self.round_blocks):
            part = list(keys[at : at + self.round_blocks])
            ids = list(block_ids[at : at + len(part)])
            segments = self._segments()
            found = None
            if segments is not None:
                found = self.client._run(self._load_direct(segments, part, ids, session))
            if found is None:  # gRPC, another layout, or a read lease that expired: staged
                found = self._load_staged(part, ids, session)
            loaded += found
            if found < len(part):
                break
        self.traffic.loaded_bytes += loaded * self.layout.block_bytes
        self.traffic.load_s += time.perf_counter() - started
        return loaded

    def _load_staged(self, keys: list[bytes], block_ids: list[int], session: str | None) -> int:
        rows = self._rows("load", len(keys))
        stored = self.client.fetch(self.namespace, keys, session=session, stop_at_miss=True, into=list(rows))
        found = next((i for i, b in enumerate(stored) if b is None), len(stored))
        if found:
            self.layout.scatter(rows[:found], block_ids[:found])
        return found

    def _load_direct(
        self, segments: shm.Segments, keys: list[bytes], block_ids: list[int], session: str | None
    ) -> Op[int | None]:
        """Acquire, copy each slot's pages into the engine's blocks, Release; None when the lease
        expired first (what was copied may be torn: the caller loads again, staged)."""
        request = pb.AcquireRequest(
            namespace=self.namespace, keys=keys, session=session or "", stop_at_miss=True
        )
        reply = yield Rpc("Acquire", request)
        if (yield from self.client._stale(segments, reply)):
            return None
        size = self.layout.block_bytes
        found = next((i for i, b in enumerate(reply.blocks) if not b.found), len(reply.blocks))
        try:
            places = [None if b.inline else (b.segment, b.offset) for b in reply.blocks[:found]]
            for at, first, n in _slot_runs(block_ids[:found], places, size):
                b = reply.blocks[at]
                view = segments.view(b.segment, b.offset, n * size)
                self.layout.from_slots(torch.frombuffer(view, dtype=torch.uint8).view(n, size), first)
            for b, block in zip(reply.blocks[:found], block_ids, strict=False):
                if b.inline:  # not in shared memory (on disk): its bytes came with the reply
                    rows = torch.frombuffer(bytearray(b.data), dtype=torch.uint8).view(1, size)
                    self.layout.from_slots(rows, block)
        finally:
            valid = (yield Rpc("Release", pb.LeaseRequest(lease_id=reply.lease_id))).valid
        return found if valid else None

    def save(self, keys: Sequence[bytes], block_ids: Sequence[int], parent: bytes | None) -> list[str]:
        """Store engine blocks `block_ids` as the chain `keys` (after `parent`); returns tiers."""
        started = time.perf_counter()
        tiers: list[str] = []
        for at in range(0, len(keys), self.round_blocks):
            part = list(keys[at : at + self.round_blocks])
            ids = list(block_ids[at : at + len(part)])
            segments = self._segments()
            done = None
            if segments is not None:
                done = self.client._run(self._save_direct(segments, part, ids, parent))
            tiers += done if done is not None else self._save_staged(part, ids, parent)
            parent = part[-1]
        self.traffic.saved_bytes += len(keys) * self.layout.block_bytes
        self.traffic.save_s += time.perf_counter() - started
        return tiers

    def _save_staged(self, keys: list[bytes], block_ids: list[int], parent: bytes | None) -> list[str]:
        rows = self._rows("save", len(keys))
        self.layout.gather(block_ids, rows)
        metas = [b""] * len(keys)  # raw bytes: the layout, not the SDK, knows what they are
        return self.client.put(self.namespace, keys, list(rows), parent=parent, metas=metas)

    def _save_direct(
        self, segments: shm.Segments, keys: list[bytes], block_ids: list[int], parent: bytes | None
    ) -> Op[list[str] | None]:
        """Reserve, copy each block's pages into its slot, Commit; blocks without room go staged
        after. None when the lease ran out (nothing was stored: the caller saves staged)."""
        size = self.layout.block_bytes
        parents = [parent or b"", *keys[:-1]]
        headers = [pb.BlockHeader(key=k, parent=p, size=size) for k, p in zip(keys, parents, strict=True)]
        started = time.monotonic()
        reply = yield Rpc("Reserve", pb.ReserveRequest(namespace=self.namespace, blocks=headers))
        if (yield from self.client._stale(segments, reply)):
            return None

        def write() -> None:
            places = [(s.segment, s.offset) if s.state == pb.SLOT_WRITE else None for s in reply.slots]
            for at, first, n in _slot_runs(block_ids, places, size):
                if time.monotonic() > core.lease_deadline(started, reply):
                    raise core.LeaseRunningOut(f"lease {reply.lease_id} is running out")
                s = reply.slots[at]
                view = segments.view(s.segment, s.offset, n * size)
                self.layout.to_slots(first, torch.frombuffer(view, dtype=torch.uint8).view(n, size))

        done = yield from self.client._commit_written(reply.lease_id, write)
        if done is None:
            return None
        tiers = done[1]
        for i, s in enumerate(reply.slots):
            if s.state == pb.SLOT_NO_ROOM:  # rare: each on its own, with its own parent
                tiers[i] = self._save_staged([keys[i]], [block_ids[i]], parents[i] or None)[0]
        return tiers
