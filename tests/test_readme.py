"""README's snippets run as pasted, in order: the quickstart's `kvstore serve` line starts a real
server (on a free port instead of 50551), every ```python block then runs in one namespace, and
every `kvctl` line of the bash blocks runs against that server. ```py blocks are fragments (they
need your graph or agent) and are not run; `run_tests()` and `sample()` stand for your own code."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import torch
from kvstore.sdk import AgentSession

from kvstore.kvctl import main as kvctl
from kvstore.server.process import ServerProcess

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
ADDRESS = "127.0.0.1:50551"


def snippets(language: str) -> list[str]:
    return [code for lang, code in FENCE.findall(README.read_text()) if lang == language]


def serve_flags() -> list[str]:
    """The quickstart's `kvstore serve` flags, less the port and data dir the test picks."""
    line = next(
        line for code in snippets("bash") for line in code.splitlines() if line.startswith("kvstore serve")
    )
    args = shlex.split(line)[2:]
    flags = []
    while args:
        flag = args.pop(0)
        value = [args.pop(0)] if args and not args[0].startswith("--") else []
        if flag not in ("--port", "--data-dir"):
            flags += [flag, *value]
    return flags


def kvctl_lines() -> list[list[str]]:
    lines = [line.split("#")[0] for code in snippets("bash") for line in code.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("kvctl ")]


def test_readme_snippets_run_in_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "--policy" in serve_flags()  # the quickstart runs the policy the hints need
    with ServerProcess(tmp_path / "data", serve_flags()) as server:
        ran: list[str] = []
        namespace = {"run_tests": lambda: ran.append("tests"), "sample": lambda: ran.append("sample")}
        python = snippets("python")
        assert len(python) >= 3
        for code in python:
            exec(compile(code.replace(ADDRESS, server.address), str(README), "exec"), namespace)
        assert ran == ["tests", "sample"]
        assert all(torch.equal(a, b) for a, b in zip(namespace["same"], namespace["blocks"], strict=True))
        assert all(torch.equal(a, b) for a, b in zip(namespace["out"], namespace["blocks"], strict=True))
        namespace["kv"].close()
        capsys.readouterr()
        assert AgentSession(server.address, session_id="agent-7").flush()  # `kvctl session close` closes it
        lines = kvctl_lines()
        assert {line[0] for line in lines} >= {"stats", "sessions", "blocks", "evict", "session", "health"}
        for argv in lines:
            assert kvctl(["--address", server.address, *argv]) == 0, argv
