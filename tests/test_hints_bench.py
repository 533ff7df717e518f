"""`kvstore bench hints` end to end: a real server beside a bare one, and the live timeline."""

from __future__ import annotations

import json
from pathlib import Path

from kvstore.cli import main


def test_bench_hints_compares_with_a_bare_server_and_shows_the_prefetch(tmp_path: Path) -> None:
    out = tmp_path / "hints.json"
    args = ["bench", "hints", "--sessions", "4", "--calls", "5", "--seconds", "0.3", "--rounds", "2"]
    assert main([*args, "--tool-s", "2", "--hbm-device", "cpu", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    rounds = figures["throughput"]
    assert len(rounds) == 2
    for row in rounds:
        assert row["kvstore hints/s"] > 0 and row["bare grpc.aio hints/s"] > 0
        assert row["ratio"] == row["kvstore hints/s"] / row["bare grpc.aio hints/s"]
        assert row["kvstore CPU us/hint"] > 0 and row["bare CPU us/hint"] > 0
    moments = {row["moment"]: row for row in figures["timeline"]}
    assert moments["fewest blocks in HBM"]["blocks in hbm"] != "32/32"  # pressure pushed it out
    assert moments["prefetch done"]["t (s)"] < moments["tool call ends"]["t (s)"]  # back in time
    assert moments["tool call ends"]["blocks in hbm"] == "32/32"
    assert main(["bench", "hints", "--sessions", "0"]) == 2
    assert main(["bench", "hints", "--seconds", "-1"]) == 2
