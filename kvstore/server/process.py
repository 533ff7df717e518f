"""Run `kvstore serve` as a child process on a free loopback port (tests and benchmarks)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

_LISTENING = re.compile(r"kvstore listening on (\S+)")
_PREFAULTED = re.compile(rb"prefaulted (\d+) MiB of shared memory in ([0-9.]+) s")
PREFAULT_POLL_S = 0.05


def listening_on(proc: subprocess.Popen[bytes], pattern: re.Pattern[str], timeout: float) -> str | None:
    """Read the child's stdout until a line matches `pattern` (its group 1: where it listens), or
    None when the child ends its output or `timeout` passes first."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline().decode()
        if not line:
            return None
        found = pattern.search(line)
        if found:
            return found.group(1)
    return None


class ServerProcess:
    def __init__(
        self,
        data_dir: Path,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        config: Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "kvstore.cli",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
            *args,
        ]
        if config is not None:
            cmd += ["--config", str(config)]
        self.log_path = Path(data_dir).with_name(Path(data_dir).name + ".log")
        Path(data_dir).parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self._log_start = self._log.tell()  # the log is appended to across runs of one data dir
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
        )
        self.address = self._wait_listening(start_timeout)
        self._wait_healthy(start_timeout)

    def _wait_listening(self, timeout: float) -> str:
        address = listening_on(self.proc, _LISTENING, timeout)
        if address is None:
            self.proc.kill()
            raise RuntimeError(f"kvstore serve did not start; log: {self.log_path.read_text()[-3000:]}")
        return address

    def _wait_healthy(self, timeout: float) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout, wait_for_ready=True)
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                raise RuntimeError(f"kvstore at {self.address} is not serving")

    def wait_prefaulted(self, timeout: float = 120.0) -> tuple[int, float] | None:
        """Wait until the server has faulted its shared segments in (the log line of
        `kvstore.server.app.prefault`), so a benchmark does not measure first-touch page faults.
        Returns (MiB, seconds) it reported, or None when the line did not come in time (a log level
        above info, or the server exited)."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                m = _PREFAULTED.search(f.read())
            if m:
                return int(m.group(1)), float(m.group(2))
            if time.monotonic() >= deadline or self.proc.poll() is not None:
                return None
            time.sleep(PREFAULT_POLL_S)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs (crash recovery tests)."""
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the clean shutdown; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.terminate()
