"""Config: YAML < env < flags, sizes like 40GiB, and errors that name the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kvstore.config import ConfigError, load_settings


def test_precedence_yaml_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("port: 6000\ndram:\n  capacity: 2GiB\ndisk:\n  capacity: 1TiB\npolicy: lru\n")
    monkeypatch.setenv("KVSTORE_PORT", "7000")
    monkeypatch.setenv("KVSTORE_DRAM__CAPACITY", "3GiB")
    s = load_settings(config, port=8000)
    assert s.port == 8000  # flag beats env beats file
    assert s.dram.capacity == 3 * 2**30  # env beats file
    assert s.disk.capacity == 2**40  # file beats default
    assert s.hbm.enabled == "auto"


@pytest.mark.parametrize(
    ("yaml_text", "field"),
    [
        ("dram:\n  capacity: lots\n", "dram.capacity"),
        ("port: 70000\n", "port"),
        ("policy: fifo\n", "policy"),
        ("dram:\n  capcity: 1GiB\n", "dram.capcity"),
        ("namespaces:\n  - {name: a, model: m, block_bytes: 0}\n", "namespaces.0.block_bytes"),
        ("namespaces:\n  - {name: a, model: m}\n  - {name: a, model: n}\n", "duplicate"),
        ("namespaces:\n  - {name: a, model: m, hash: md5}\n", "namespaces.0.hash"),
        ("- just\n- a list\n", "mapping"),
        ("port: [\n", "not valid YAML"),
        ("shared_memory:\n  enabled: maybe\n", "shared_memory.enabled"),
        ("shared_memory:\n  lease_ttl_s: 0\n", "shared_memory.lease_ttl_s"),
    ],
)
def test_malformed_config_names_the_field(tmp_path: Path, yaml_text: str, field: str) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(config)


def test_bad_env_names_the_variable_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVSTORE_DISK__CAPACITY", "huge")
    with pytest.raises(ConfigError, match=r"(?s)environment.*disk\.capacity \(KVSTORE_DISK__CAPACITY\)"):
        load_settings()


def test_serve_with_a_bad_config_exits_2_and_says_which_field(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("disk:\n  capacity: -5\n")
    proc = subprocess.run(
        [sys.executable, "-m", "kvstore.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "disk.capacity" in proc.stderr


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml")
