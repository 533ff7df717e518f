"""Real Redis servers for tests: one standalone server, or a 3-master cluster, on free loopback ports.

Each runs `redis-server` as a child with no persistence; `kill` and `start` again on the same
port stand for an outage and a restart (the restarted server is empty, as after a crash)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
from conftest import free_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def need_redis() -> None:
    if REDIS_SERVER is None or REDIS_CLI is None:
        pytest.skip("redis-server / redis-cli not installed (Debian package redis-server)")


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None, cluster: bool = False) -> None:
        need_redis()
        self.port = port or (cluster_port() if cluster else free_port())
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)]
        args += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        if self.cluster:
            (self.dir / "nodes.conf").unlink(missing_ok=True)
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise
                time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)


class RedisCluster:
    """Three masters, no replicas (`redis-cli --cluster create`)."""

    def __init__(self, workdir: Path) -> None:
        self.nodes: list[RedisServer] = []
        try:
            self._create(workdir)
        except BaseException:  # no node outlives a cluster that did not come up
            self.kill()
            raise

    def _create(self, workdir: Path) -> None:
        for _ in range(3):
            self.nodes.append(RedisServer(workdir, cluster=True))
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
        client = redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)
        deadline = time.monotonic() + 15
        while client.cluster_info().get("cluster_state") != "ok":
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not reach state ok")
            time.sleep(0.05)
        client.close()

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()
