"""`kvstore bench crash` end to end, tiny: servers killed with SIGKILL mid-write lose nothing acked."""

from __future__ import annotations

import json
from pathlib import Path

from kvstore.cli import main


def test_bench_crash_kills_mid_write_and_finds_nothing_corrupt_or_lost(tmp_path: Path) -> None:
    out = tmp_path / "crash.json"
    args = ["bench", "crash", "--cycles", "2", "--min-s", "0.3", "--max-s", "0.5", "--json", str(out)]
    assert main(args) == 0
    figures = json.loads(out.read_text())["figures"]
    assert figures["blocks acknowledged on disk"] > 0
    assert figures["corrupt blocks served (all checks)"] == 0
    assert figures["acknowledged blocks lost (all checks)"] == 0
    assert figures["blocks served at the end"] >= figures["blocks acknowledged on disk"]
    assert main(["bench", "crash", "--cycles", "0"]) == 2
