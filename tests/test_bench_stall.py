"""`kvstore bench stall`, tiny and end to end: a real server, every kind of move, both probers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kvstore.bench import add_bench_parser
from kvstore.bench.stall_bench import main
from kvstore.index import BlockEntry
from kvstore.tiers.disk import DiskTier

BLOCK = 4096
MOVE_FIELDS = {"kind", "bytes", "seconds", "lookup_p99_ms", "lookup_max_ms", "hint_p99_ms"}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_parser(parser.add_subparsers())
    return parser.parse_args(["bench", "stall", *argv])


def test_stall_bench_moves_every_way_and_probes_during_each_move(tmp_path: Path) -> None:
    out = tmp_path / "stall.json"
    # 16 MiB in 1 MiB blocks; probes back to back, so one is in flight whenever a move runs.
    args = parse(
        "--gib", str(16 / 1024), "--block-mib", "1", "--rounds", "1", "--idle-s", "0.3",
        "--settle-s", "0.05", "--probe-interval-ms", "0", "--data-dir", str(tmp_path), "--json", str(out),
    )  # fmt: skip
    assert args.run is main
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert {"lookup_p99_ms", "hint_p99_ms"} <= set(result["idle"])
    assert result["idle"]["lookups"] > 0 and result["idle"]["hints"] > 0
    moves = result["moves"]
    assert [m["kind"] for m in moves] == ["hbm→dram", "dram→hbm", "dram→disk", "disk→hbm"]
    for move in moves:
        assert set(move) >= MOVE_FIELDS, move
        assert move["bytes"] == 16 * 2**20
        assert move["seconds"] > 0 and move["ratio_to_raw"] > 0
        assert move["met"]["lookup_during"], f"no Lookup completed during {move['kind']}"
    assert result["config"]["probe_errors"] == {"lookup": 0, "hint": 0}
    assert result["config"]["prefaulted_mib"] is not None  # the server said it prefaulted


def test_a_file_freed_by_a_move_goes_off_the_lock_and_never_takes_a_newer_copy_with_it(
    tmp_path: Path,
) -> None:
    """What the stall bench's disk -> HBM moves rely on: the mover frees a block's file without
    holding the store's lock for the unlink (a reaper thread does it), and a key that lands on disk
    again before the reaper comes keeps its new file."""
    tier = DiskTier(tmp_path, 4 * BLOCK)
    entry = BlockEntry(namespace="t", key=b"k" * 32, parent=None, size=BLOCK, tier="disk")
    path = tier.path("t", entry.key)
    assert tier.allocate(entry)
    tier.write(entry, b"1" * BLOCK)
    tier.free_later(entry)  # the block moved up: its file goes, later
    assert tier.used == 0
    assert tier.allocate(entry)  # ...and it comes straight back down
    tier.write(entry, b"2" * BLOCK)
    tier.close()  # the reaper has done all it was given
    assert tier.read_bytes(entry) == b"2" * BLOCK
    tier.free_later(entry)
    tier.close()
    assert not path.exists()
