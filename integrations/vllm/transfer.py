"""Engine blocks <-> kvstore blocks: the bytes of one vLLM block across all layers, and the copies.

One kvstore block is one vLLM block (`block_size` tokens) of every attention layer, laid out layer
after layer in a fixed order (sorted layer names), each layer's part being that layer's page for
the block. So a block read back restores every layer, and the namespace's `block_bytes` is the
engine's per-block KV size over all layers.

No vLLM import here: only the paged KV tensors vLLM registers (one per layer), so the benchmark
can drive the same copies on a cache of the same layout without starting an engine.

Copies: a save gathers the blocks of each layer with one `index_select` into a staging buffer and
the SDK copies each staged block into its shared-memory slot; a load is the mirror image (slot ->
staging, then one `index_copy_` per layer). Two copies per byte each way, each a large vectorised
one; copying layer pages straight into the slots would save one but costs a Python call per
(block, layer).
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
            layers.append(LayerPage(name, tensor, dim, nbytes, offset))
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
        for layer in self.layers:
            pages = layer.tensor.index_select(layer.block_dim, ids)
            if layer.block_dim:
                pages = pages.movedim(layer.block_dim, 0)
            out[:, layer.offset : layer.offset + layer.nbytes].copy_(
                pages.contiguous().view(torch.uint8).reshape(n, layer.nbytes)
            )

    def scatter(self, rows: torch.Tensor, block_ids: Sequence[int]) -> None:
        """Copy the rows of `rows` (kvstore blocks) into engine blocks `block_ids`."""
        ids = torch.as_tensor(list(block_ids), dtype=torch.long)
        for layer in self.layers:
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
    """Loads and saves of engine blocks through a kvstore client (shared memory on the same host)."""

    def __init__(self, layout: KVLayout, client: Client, namespace: str) -> None:
        self.layout = layout
        self.client = client
        self.namespace = namespace
        self.traffic = Traffic()

    def load(self, keys: Sequence[bytes], block_ids: Sequence[int], session: str | None) -> int:
        """Read blocks `keys` into engine blocks `block_ids`; returns how many leading blocks were
        loaded (the rest were not stored any more and must be recomputed)."""
        started = time.perf_counter()
        rows = self.layout.staging(len(keys))
        stored = self.client.fetch(
            self.namespace, list(keys), session=session, stop_at_miss=True, into=list(rows)
        )
        found = next((i for i, b in enumerate(stored) if b is None), len(stored))
        if found:
            self.layout.scatter(rows[:found], block_ids[:found])
        self.traffic.loaded_bytes += found * self.layout.block_bytes
        self.traffic.load_s += time.perf_counter() - started
        return found

    def save(self, keys: Sequence[bytes], block_ids: Sequence[int], parent: bytes | None) -> list[str]:
        """Store engine blocks `block_ids` as the chain `keys` (after `parent`); returns tiers."""
        started = time.perf_counter()
        rows = self.layout.staging(len(keys))
        self.layout.gather(block_ids, rows)
        metas = [b""] * len(keys)  # raw bytes: the layout, not the SDK, knows what they are
        tiers = self.client.put(self.namespace, list(keys), list(rows), parent=parent, metas=metas)
        self.traffic.saved_bytes += len(keys) * self.layout.block_bytes
        self.traffic.save_s += time.perf_counter() - started
        return tiers
