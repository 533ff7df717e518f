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
    assert {"kvstore", "vllm", "proxy", "redis"} <= compose.keys()


def test_the_lmcache_pair_agrees_with_kvstore_and_with_the_plugin() -> None:
    """deploy/lmcache.yaml and deploy/kvstore.yaml name one namespace with one block per chunk, the
    proxy puts the session under the request config the plugin reads, and vLLM loads the LMCache
    interface the plugin is for (the in-process engine's remote-storage plugins)."""
    from kvstore.integrations.lmcache.connector import SESSION_CONFIG, KVStoreConnector

    settings = load_settings(DEPLOY / "kvstore.yaml")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]
    lmcache = yaml.safe_load((DEPLOY / "lmcache.yaml").read_text())
    prefix = "remote_storage_plugin.kvstore."
    plugin = {k.removeprefix(prefix): v for k, v in lmcache["extra_config"].items()}
    (namespace,) = settings.namespaces
    assert lmcache["remote_storage_plugins"] == ["kvstore"]
    assert f"{plugin['module_path']}:{plugin['class_name']}" == (
        f"kvstore.integrations.lmcache.connector:{KVStoreConnector.__name__}"
    )
    assert namespace.block_tokens == lmcache["chunk_size"]
    assert namespace.block_bytes == lmcache["chunk_size"] * LLAMA3_8B_BYTES_PER_TOKEN  # no padding
    assert plugin["session_config"] == SESSION_CONFIG
    # LMCache forwards only lmcache.* request configs, and lmcache.tag.* ones split its chunk keys
    assert SESSION_CONFIG.startswith("lmcache.") and not SESSION_CONFIG.startswith("lmcache.tag.")
    assert f"--session-key={SESSION_CONFIG}" in compose["proxy"]["command"]
    assert "LMCacheConnectorV1" in " ".join(compose["vllm"]["command"])
    assert compose["vllm"]["environment"]["LMCACHE_CONFIG_FILE"] == "/etc/lmcache/lmcache.yaml"
