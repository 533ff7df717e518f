"""`kvstore bench redis-scale` against a real redis-server it starts itself (docs/scale.md's figures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kvstore.cli import main as kvstore_main

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")


def test_measures_index_entries_blocks_and_throughput(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    args = ["--entries", "300,600", "--blocks", "2", "--requests", "2000", "--json", str(out)]
    assert kvstore_main(["bench", "redis-scale", *args]) == 0
    doc = json.loads(out.read_text())
    key_len = len("kvs:acme:llama-3-8b:i:") + 64
    index = doc["index"]
    assert [(e["entries"], e["holders"], e["ttl"]) for e in index][-1] == (600, 1, False)
    for entry in index:
        assert key_len < entry["memory_usage_mean"] < 1000 and entry["encoding"] == "listpack"
    one, four = (next(e for e in index if e["holders"] == h) for h in (1, 4))
    assert four["memory_usage_mean"] > one["memory_usage_mean"]  # a field per holder
    for block in doc["blocks"]:
        assert block["memory_usage"] >= block["value"] >= block["payload"]
    assert set(doc["throughput"]) == {"hset_per_s", "expire_per_s", "hgetall_per_s"}
    assert all(v > 0 for v in doc["throughput"].values())
