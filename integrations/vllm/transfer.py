"""Engine blocks <-> kvstore blocks: the bytes of one vLLM block across all layers, and the copies.

One kvstore block is one vLLM block (`block_size` tokens) of every attention layer, laid out layer
after layer in a fixed order (sorted layer names), each layer's part being that layer's page for
the block. So a block read back restores every layer, and the namespace's `block_bytes` is the
engine's per-block KV size over all layers.

No vLLM import here: only the paged KV tensors vLLM registers (one per layer), so the benchmark
can drive the same copies on a cache of the same layout without starting an engine.

Copies: a save gathers the blocks of each layer into a staging buffer (one slice copy per run of
consecutive engine blocks, on bytes) and the SDK copies each staged block into its shared-memory
slot; a load is the mirror image (slot -> staging -> engine blocks). Two copies per byte each way,
each a large one; copying layer pages straight into the slots would save one but costs a Python
call per (block, layer).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from kvstore.sdk import Client


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

    def load(self, keys: Sequence[bytes], block_ids: Sequence[int], session: str | None) -> int:
        """Read blocks `keys` into engine blocks `block_ids`; returns how many leading blocks were
        loaded (the rest were not stored any more and must be recomputed)."""
        started = time.perf_counter()
        loaded = 0
        for at in range(0, len(keys), self.round_blocks):
            part = list(keys[at : at + self.round_blocks])
            rows = self._rows("load", len(part))
            stored = self.client.fetch(
                self.namespace, part, session=session, stop_at_miss=True, into=list(rows)
            )
            found = next((i for i, b in enumerate(stored) if b is None), len(stored))
            if found:
                self.layout.scatter(rows[:found], block_ids[at : at + found])
            loaded += found
            if found < len(part):
                break
        self.traffic.loaded_bytes += loaded * self.layout.block_bytes
        self.traffic.load_s += time.perf_counter() - started
        return loaded

    def save(self, keys: Sequence[bytes], block_ids: Sequence[int], parent: bytes | None) -> list[str]:
        """Store engine blocks `block_ids` as the chain `keys` (after `parent`); returns tiers."""
        started = time.perf_counter()
        tiers: list[str] = []
        for at in range(0, len(keys), self.round_blocks):
            part = list(keys[at : at + self.round_blocks])
            rows = self._rows("save", len(part))
            self.layout.gather(block_ids[at : at + len(part)], rows)
            metas = [b""] * len(part)  # raw bytes: the layout, not the SDK, knows what they are
            tiers += self.client.put(self.namespace, part, list(rows), parent=parent, metas=metas)
            parent = part[-1]
        self.traffic.saved_bytes += len(keys) * self.layout.block_bytes
        self.traffic.save_s += time.perf_counter() - started
        return tiers
