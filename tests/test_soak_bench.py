"""`kvstore bench soak`, short: a few sessions for seconds; nothing leaks, no call fails."""

from __future__ import annotations

import json
from pathlib import Path

from kvstore.cli import main


def test_bench_soak_comes_back_flat(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    args = ["bench", "soak", "--sessions", "4", "--seconds", "6", "--sample-s", "2", "--idle-ttl-s", "2"]
    assert main([*args, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    figures = report["figures"]
    assert figures["calls"] > 0 and figures["errors"] == 0
    assert (figures["pinned blocks after"], figures["leases after"], figures["sessions after"]) == (0, 0, 0)
    assert {"Put", "Get", "Lookup", "BeginToolCall", "CloseSession"} <= set(report["calls"])
    assert main(["bench", "soak", "--sessions", "0"]) == 2
