"""kvctl against a real server: tables, --json, --help, and a clear error when nothing listens."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import BLOCK, ThreadedServer
from kvstore.sdk import Client

from kvstore.kvctl import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_stats_blocks_evict_health(server: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    with Client(server.address) as kv:
        keys = kv.keys_for("t", range(4 * 6))
        kv.put("t", keys, [os.urandom(BLOCK) for _ in keys], session="s-42")
    code, out, _ = run(capsys, "--address", server.address, "--json", "stats")
    stats = json.loads(out)
    assert code == 0 and stats["blocks"] == "6" and stats["tiers"][0]["name"] == "hbm"
    code, out, _ = run(capsys, "--address", server.address, "stats")
    assert code == 0 and "hbm" in out and "dram" in out and "disk" in out
    code, out, _ = run(capsys, "--address", server.address, "blocks", "--tier", "hbm", "--limit", "3")
    assert code == 0 and "3 of 6 blocks" in out and "s-42" in out
    code, out, _ = run(capsys, "--address", server.address, "evict", "--tier", "hbm", "--bytes", "8KiB")
    assert code == 0 and "demoted 2 blocks" in out
    assert server.store.stats().tiers[1].blocks == 2
    code, out, _ = run(
        capsys, "--address", server.address, "--json", "evict", "--namespace", "t", "--drop", keys[0].hex()
    )
    assert code == 0 and json.loads(out)["blocks"] == 1
    code, out, _ = run(capsys, "--address", server.address, "health")
    assert code == 0 and "SERVING" in out


def test_server_side_errors_exit_1_with_the_message(server: ThreadedServer, capsys) -> None:
    code, _, err = run(capsys, "--address", server.address, "evict", "--namespace", "t", "ab" * 16)
    assert code == 1 and "NOT_FOUND" in err and "not stored" in err


def test_unreachable_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = run(capsys, "--address", f"127.0.0.1:{port}", "--timeout", "2", "stats")
    assert (code == 1 and "UNAVAILABLE" in err) or "DEADLINE_EXCEEDED" in err
    assert "kvstore serve" in err or "DEADLINE" in err


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["evict", "--tier", "hbm", "--bytes", "lots"])
    assert exc.value.code == 2
    assert "not a size" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["stats", "--help"],
        ["blocks", "--help"],
        ["evict", "--help"],
        ["health", "--help"],
        ["sessions", "--help"],
    ],
)
def test_help_everywhere(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvstore.kvctl", *argv], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "usage: kvctl" in proc.stdout
