"""kvctl against a real server: tables, --json, --help, and a clear error when nothing listens."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import BLOCK, ThreadedServer, make_settings
from kvstore.sdk import Client

from kvstore.kvctl import main
from kvstore.stats import store_stats


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
    assert code == 0 and stats["blocks"] == 6 and stats["tiers"][0]["name"] == "hbm"
    assert stats["tiers"][0]["used_bytes"] == 6 * BLOCK and stats["uptime_s"] > 0
    assert stats["namespaces"][0]["seed"] == kv.namespace("t").seed.hex()
    code, out, _ = run(capsys, "--address", server.address, "stats")
    assert code == 0 and "hbm" in out and "dram" in out and "disk" in out
    code, out, _ = run(capsys, "--address", server.address, "blocks", "--tier", "hbm", "--limit", "3")
    assert code == 0 and "3 of 6 blocks" in out and "s-42" in out
    code, out, _ = run(capsys, "--address", server.address, "evict", "--tier", "hbm", "--bytes", "8KiB")
    assert code == 0 and "demoted 2 of 2 blocks" in out
    assert store_stats(server.store).tiers[1].blocks == 2
    code, out, _ = run(
        capsys, "--address", server.address, "--json", "evict", "--namespace", "t", "--drop", keys[0].hex()
    )
    assert code == 0 and json.loads(out) == {"blocks": 1, "bytes": BLOCK, "demoted": 0, "dropped": 1}
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
        ["session", "close", "--help"],
    ],
)
def test_help_everywhere(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvstore.kvctl", *argv], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "usage: kvctl" in proc.stdout


def test_options_go_before_or_after_the_command(server: ThreadedServer, capsys) -> None:
    before = run(capsys, "--address", server.address, "--json", "stats")
    after = run(capsys, "stats", "--json", "--address", server.address)
    assert before[0] == after[0] == 0
    first, second = json.loads(before[1]), json.loads(after[1])
    first.pop("uptime_s"), second.pop("uptime_s")
    assert first == second
    code, out, _ = run(capsys, "--json", "health", "--address", server.address, "--timeout", "5")
    assert code == 0 and json.loads(out)["status"] == "SERVING"


@pytest.mark.parametrize("tool", ["kvctl", "kvstore"])
def test_version(tool: str) -> None:
    module = "kvstore.kvctl" if tool == "kvctl" else "kvstore.cli"
    proc = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "0.1.0" in proc.stdout


def test_keys_are_hex_everywhere_and_wide_tables_cut_nothing(server: ThreadedServer, capsys) -> None:
    session = "agent-" + "x" * 60  # longer than any column an 80-column table would give it
    with Client(server.address) as kv:
        keys = kv.keys_for("t", range(4 * 2))
        kv.put("t", keys, [os.urandom(BLOCK) for _ in keys], session=session)
    code, out, _ = run(capsys, "--address", server.address, "--json", "blocks")
    listed = {b["key"]: b for b in json.loads(out)["blocks"]}
    assert code == 0 and sorted(listed) == sorted(k.hex() for k in keys)
    assert listed[keys[1].hex()]["parent"] == keys[0].hex() and listed[keys[1].hex()]["sessions"] == [session]
    # a key listed by `blocks` is what `evict` takes
    code, out, _ = run(capsys, "--address", server.address, "evict", "--namespace", "t", keys[1].hex())
    assert code == 0 and "demoted 1 of 1 blocks" in out
    code, out, _ = run(capsys, "--address", server.address, "blocks")  # not a terminal: 80 columns
    assert code == 0 and keys[0].hex() not in out and keys[0].hex()[:12] in out and session not in out
    code, out, _ = run(capsys, "--address", server.address, "blocks", "--wide")
    assert code == 0 and all(k.hex() in out for k in keys) and session in out
    code, out, _ = run(capsys, "--address", server.address, "--wide", "sessions")
    assert code == 0 and session in out


def test_evict_says_dropped_for_blocks_it_dropped(server: ThreadedServer, capsys) -> None:
    with Client(server.address) as kv:
        keys = kv.keys_for("t", range(4 * 3))
        kv.put("t", keys, [os.urandom(BLOCK) for _ in keys])
    for tier in ("hbm", "dram"):  # down to disk, the bottom tier
        code, out, _ = run(capsys, "--address", server.address, "evict", "--tier", tier, "--bytes", "1MiB")
        assert code == 0 and "demoted 3 of 3 blocks" in out, out
    code, out, _ = run(capsys, "--address", server.address, "evict", "--tier", "disk", "--bytes", "4KiB")
    assert code == 0 and "dropped 1 of 1 blocks" in out and "demoted" not in out, out
    code, out, _ = run(
        capsys, "--address", server.address, "--json", "evict", "--namespace", "t", keys[2].hex()
    )
    assert json.loads(out) == {"blocks": 1, "bytes": BLOCK, "demoted": 0, "dropped": 1}
    assert store_stats(server.store).blocks == 1


def test_session_close(tmp_path, capsys) -> None:
    from kvstore.sdk import AgentSession

    srv = ThreadedServer(make_settings(tmp_path / "data", policy="agent"))
    try:
        session = AgentSession(srv.address, session_id="agent-7", namespace="t")
        with Client(srv.address) as kv:
            keys = kv.keys_for("t", range(8))
            kv.put("t", keys, [os.urandom(BLOCK) for _ in keys], session="agent-7")
        assert session.flush()
        code, out, _ = run(capsys, "--address", srv.address, "session", "close", "agent-7")
        assert code == 0 and "closed session agent-7" in out
        assert "agent-7" not in srv.store.sessions.sessions and store_stats(srv.store).blocks == 2
        code, _, err = run(capsys, "--address", srv.address, "session", "close", "agent-7", "--json")
        assert code == 1 and "NOT_FOUND" in err and "agent-7" in err
    finally:
        srv.stop()
