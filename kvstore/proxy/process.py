"""Run `kvstore proxy` (or the stub engine) as a child process on a free loopback port, for tests
and benchmarks. (`kvstore.server.process.ServerProcess` does the same for `kvstore serve`.)"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from kvstore.server.process import listening_on


class ListeningProcess:
    """A child that prints `<banner> listening on <url>` once it serves; `url` is that URL."""

    def __init__(self, args: Sequence[str], banner: str, start_timeout: float = 60.0) -> None:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.url = self._wait_listening(re.compile(re.escape(banner) + r" listening on (\S+)"), start_timeout)

    def log(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def _wait_listening(self, pattern: re.Pattern[str], timeout: float) -> str:
        url = listening_on(self.proc, pattern, timeout)
        if url is None:
            self.proc.kill()
            raise RuntimeError(f"{' '.join(self.proc.args)} did not start; log: {self.log()[-3000:]}")
        return url

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def __enter__(self) -> ListeningProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProxyProcess(ListeningProcess):
    def __init__(self, upstream: str, kvstore: str, args: Sequence[str] = ()) -> None:
        command = ["kvstore.cli", "proxy", "--port", "0", "--upstream", upstream, "--kvstore", kvstore]
        super().__init__([*command, *args], "kvstore proxy")


class StubProcess(ListeningProcess):
    """The stub engine (`kvstore.bench.stub_upstream`)."""

    def __init__(self, args: Sequence[str] = ()) -> None:
        super().__init__(["kvstore.bench.stub_upstream", "--port", "0", *args], "stub upstream")
