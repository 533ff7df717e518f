"""Real Redis servers for tests: one standalone server (kvstore.bench.redis_server), or a 3-master
cluster, on free loopback ports; tests skip where redis-server is not installed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis
from conftest import free_port

from kvstore.bench import redis_server
from kvstore.bench.redis_server import REDIS_SERVER

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


class RedisServer(redis_server.RedisServer):
    def __init__(self, workdir: Path, port: int | None = None, cluster: bool = False) -> None:
        need_redis()
        super().__init__(workdir, port or (cluster_port() if cluster else free_port()), cluster)


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
