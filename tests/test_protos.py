"""The committed stubs are exactly what protoc makes of protos/: contract and code cannot drift."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    generate = runpy.run_path(str(ROOT / "protos" / "generate.py"))["generate"]
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in generate(tmp_path)}
    assert fresh, "protoc produced nothing"
    committed = {p.relative_to(ROOT): p.read_bytes() for p in (ROOT / "kvstore" / "v1").glob("*_pb2*.py*")}
    assert sorted(fresh) == sorted(committed), "stub files differ: run `python protos/generate.py`"
    stale = [str(p) for p in fresh if fresh[p] != committed[p]]
    assert not stale, f"stale stubs {stale}: run `python protos/generate.py` and commit the result"
