"""The vLLM connector's copies between a paged KV cache and kvstore (no engine: the layout is
vLLM's CPU backend's, blocks first), against a real server with shared memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import BLOCK, ThreadedServer, make_settings
from kvstore.integrations.vllm.transfer import BlockTransfer, KVLayout
from kvstore.sdk import Client

BLOCKS = 12


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(make_settings(tmp_path / "data"))
    yield srv
    srv.stop()


def caches(blocks_first: bool = True) -> dict[str, torch.Tensor]:
    """Two layers of BLOCK // 2 bytes per block each: one kvstore block is one engine block."""
    shape = (BLOCKS, 8, 128) if blocks_first else (2, BLOCKS, 4, 128)
    generator = torch.Generator().manual_seed(0)
    return {f"layer.{i}": torch.randn(shape, generator=generator).to(torch.bfloat16) for i in range(2)}


@pytest.mark.parametrize("blocks_first", [True, False], ids=["direct", "staged"])
def test_blocks_round_trip_between_engine_pages_and_kvstore(
    server: ThreadedServer, blocks_first: bool
) -> None:
    kv = caches(blocks_first)
    layout = KVLayout(kv, BLOCKS)
    assert layout.block_bytes == BLOCK and layout.direct == blocks_first
    with Client(server.address) as client:
        assert client.transport() == "shm"
        transfer = BlockTransfer(layout, client, "t")
        keys = [bytes([i]) * 16 for i in range(5)]
        saved = [0, 1, 2, 6, 7]  # two runs of consecutive engine blocks
        assert all(transfer.save(keys, saved, None))
        into = [9, 10, 11, 3, 4]
        before = {name: t.clone() for name, t in kv.items()}
        assert transfer.load(keys, into, None) == 5
        dim = 0 if blocks_first else 1
        for name, t in kv.items():
            got = t.index_select(dim, torch.tensor(into))
            assert torch.equal(got, before[name].index_select(dim, torch.tensor(saved))), name
            untouched = [b for b in range(BLOCKS) if b not in into]
            assert torch.equal(
                t.index_select(dim, torch.tensor(untouched)),
                before[name].index_select(dim, torch.tensor(untouched)),
            )
        # pages went straight between the cache and the slots: no staging buffer was ever made
        assert (transfer._staging == {}) == blocks_first
        assert transfer.load([*keys[:2], b"x" * 16, keys[3]], [5, 8, 3, 4], None) == 2  # stops at a miss
    stats = server.server.leases.stats()
    assert stats["write_leases"] == 0 and stats["read_leases"] == 0  # every lease ended
