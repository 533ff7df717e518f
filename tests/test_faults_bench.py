"""`kvstore bench faults` end to end, the cross-tenant part (the disk faults need root to mount a
tmpfs, and tens of seconds): every attempt of one tenant on another's data is denied."""

from __future__ import annotations

import json
from pathlib import Path

from kvstore.cli import main


def test_bench_faults_every_cross_tenant_attempt_is_denied(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    assert main(["bench", "faults", "--skip-disk", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    figures = report["figures"]
    assert figures["cross-tenant attempts"] >= 20
    assert figures["denied (or nothing of a's shown)"] == figures["cross-tenant attempts"]
    assert figures["a's blocks, pins and sessions unchanged"] is True
