"""Crash and restart of a real `kvstore serve` process: the disk tier is the truth after kill -9."""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import yaml
from kvstore.sdk import Client

from kvstore.server.process import ServerProcess
from kvstore.tiers.disk import DiskTier
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

BLOCK = 4096


def write_config(tmp_path: Path) -> Path:
    config = tmp_path / "kvstore.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hbm": {"enabled": "off"},
                "dram": {"capacity": 4 * BLOCK},
                "disk": {"capacity": 64 * BLOCK},
                "namespaces": [{"name": "t", "model": "m", "block_tokens": 4, "block_bytes": BLOCK}],
            }
        )
    )
    return config


def disk_keys(address: str) -> list[bytes]:
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.AdminStub(channel).ListBlocks(pb.ListBlocksRequest(tier="disk", limit=1000))
    return [b.key for b in reply.blocks]


def test_kill_9_then_restart_serves_every_disk_block_identically_and_drops_corrupt_ones(
    tmp_path: Path,
) -> None:
    config, data_dir = write_config(tmp_path), tmp_path / "data"
    server = ServerProcess(data_dir, config=config)
    with Client(server.address) as kv:
        keys = kv.keys_for("t", range(4 * 20))
        payload = {k: os.urandom(BLOCK) for k in keys}
        kv.put("t", keys, [payload[k] for k in keys])
        on_disk = disk_keys(server.address)
    assert len(on_disk) == 16  # 4 stay in DRAM
    server.kill()

    corrupt, truncated = on_disk[0], on_disk[1]
    disk = DiskTier(data_dir, 0)
    path = disk.path("t", corrupt)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit in the payload
    path.write_bytes(bytes(raw))
    disk.path("t", truncated).write_bytes(disk.path("t", truncated).read_bytes()[:-100])

    with ServerProcess(data_dir, config=config) as restarted, Client(restarted.address) as kv:
        survivors = [k for k in on_disk if k not in (corrupt, truncated)]
        assert kv.get("t", survivors) == [payload[k] for k in survivors]
        assert kv.get("t", [corrupt, truncated]) == [None, None]
        in_dram_before = [k for k in keys if k not in on_disk]
        assert kv.lookup("t", keys=in_dram_before[:1]).prefix_blocks == 0  # DRAM does not survive kill -9
    assert not path.exists()


def test_sigterm_flushes_memory_tiers_so_a_restart_keeps_everything(tmp_path: Path) -> None:
    config, data_dir = write_config(tmp_path), tmp_path / "data"
    server = ServerProcess(data_dir, config=config)
    with Client(server.address) as kv:
        keys = kv.keys_for("t", range(4 * 10))
        blocks = [os.urandom(BLOCK) for _ in keys]
        kv.put("t", keys, blocks)
    assert server.terminate() == 0
    with ServerProcess(data_dir, config=config) as restarted, Client(restarted.address) as kv:
        assert kv.get("t", keys) == blocks
