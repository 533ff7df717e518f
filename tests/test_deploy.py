"""deploy/: the compose example's kvstore config is one kvstore accepts, and the pieces point at
each other (namespace, block size = LMCache chunk, addresses, one /dev/shm)."""

from __future__ import annotations

from pathlib import Path

import yaml

from kvstore.config import load_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
LLAMA3_8B_BYTES_PER_TOKEN = 131_072  # 32 layers x 8 KV heads x 128 dims x K,V x 2 bytes


def test_compose_example_is_consistent() -> None:
    settings = load_settings(DEPLOY / "kvstore.yaml")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    lmcache = yaml.safe_load((DEPLOY / "lmcache.yaml").read_text())
    plugin = {k.rsplit(".", 1)[1]: v for k, v in lmcache["extra_config"].items()}
    (namespace,) = settings.namespaces
    assert plugin["namespace"] == namespace.name
    assert namespace.block_bytes == lmcache["chunk_size"] * LLAMA3_8B_BYTES_PER_TOKEN
    assert plugin["address"] == f"kvstore:{settings.port}" and settings.host == "0.0.0.0"
    assert settings.policy == "agent" and settings.hbm.enabled == "off"
    assert settings.shared_memory.enabled == "on"
    assert compose["kvstore"]["ipc"] == "shareable" and compose["vllm"]["ipc"] == "service:kvstore"
    proxy = compose["proxy"]["command"]
    assert f"--kvstore=kvstore:{settings.port}" in proxy and f"--namespace={namespace.name}" in proxy
    assert "--session-key=lmcache.tag.session_id" in proxy
    assert {"kvstore", "vllm", "proxy", "redis"} <= compose.keys()
