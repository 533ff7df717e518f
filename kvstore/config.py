"""Server configuration: one pydantic-settings model.

Sources, later ones winning: built-in defaults, an optional YAML file, `KVSTORE_*` environment
variables (nested fields with `__`, e.g. `KVSTORE_DRAM__CAPACITY=8GiB`), then CLI flags. Sizes
accept `40GiB`-style strings. The defaults serve one machine with nothing else installed: DRAM
and disk under a data dir, an HBM tier only when CUDA is present.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from kvstore.hashing import HASHES, Namespace
from kvstore.policy.agent import AgentConfig
from kvstore.policy.ttl import TTLConfig
from kvstore.quotas import TenantQuota
from kvstore.validation import Limits

DEFAULT_PORT = 50551
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
MIN_CAPACITY = 512  # a tier's allocator unit: a smaller tier rounds down to nothing
# KVSTORE_* variables that are not server settings: the SDK's and clients' own.
CLIENT_ENV = ("KVSTORE_ADDRESS", "KVSTORE_TOKEN", "KVSTORE_TLS")

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field."""


class HbmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # auto: on when CUDA is present. on: always (on the CPU standing in when there is no GPU).
    enabled: Literal["auto", "on", "off"] = "auto"
    device: str = Field("auto", description="'auto', 'cuda', 'cuda:N' or 'cpu' (a stand-in)")
    capacity: ByteSize = Field(ByteSize(4 * 2**30), ge=MIN_CAPACITY)

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        # Whether a CUDA device exists is checked when the tier is built (that needs torch).
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError("must be 'auto', 'cuda', 'cuda:N' or 'cpu'")
        return v


class DramConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    capacity: ByteSize = Field(ByteSize(4 * 2**30), ge=MIN_CAPACITY)


class DiskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    capacity: ByteSize = Field(ByteSize(32 * 2**30), ge=MIN_CAPACITY)
    fsync: bool = Field(False, description="fsync every block file (survives power loss, not just crashes)")


class SharedMemoryConfig(BaseModel):
    """Same-host data plane: host memory tiers live in /dev/shm and clients map them."""

    model_config = ConfigDict(extra="forbid")

    # auto: on when /dev/shm exists and has room for the host tiers. on: refuse to start without it.
    enabled: Literal["auto", "on", "off"] = "auto"
    lease_ttl_s: float = Field(
        30.0, gt=0, le=3600, description="a reserved or acquired slot is taken back after this long"
    )


class LimitsConfig(BaseModel):
    """What one call may ask: bounds on the memory and work one request can cost the server."""

    model_config = ConfigDict(extra="forbid")

    max_put_bytes: ByteSize = Field(
        ByteSize(256 * 2**20), ge=1, description="block bytes one Put stream or Reserve may carry"
    )
    max_get_bytes: ByteSize = Field(
        ByteSize(256 * 2**20), ge=1, description="block bytes one Get or Acquire may copy out"
    )
    max_keys_per_call: int = Field(65536, ge=1, description="keys or blocks one call may name")
    max_lookup_tokens: int = Field(1 << 20, ge=1, description="tokens one Lookup may hash")

    def to_limits(self) -> Limits:
        return Limits(
            int(self.max_put_bytes), int(self.max_get_bytes), self.max_keys_per_call, self.max_lookup_tokens
        )


class SessionsConfig(BaseModel):
    """How many sessions may be open, and how long one may sit idle before it is closed."""

    model_config = ConfigDict(extra="forbid")

    idle_ttl_s: float = Field(
        4 * 3600.0,
        gt=0,
        description="close a session no hint or data-path call named for this long (its blocks stay)",
    )
    max_open: int = Field(100_000, ge=1, description="open sessions at most; more is RESOURCE_EXHAUSTED")


class TenantConfig(BaseModel):
    """One tenant's quotas (README "Quotas"): what its namespaces' blocks and sessions may take."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: dict[Literal["hbm", "dram", "disk", "remote"], ByteSize] = Field(
        default_factory=dict,
        description="per tier, bytes its blocks may hold (remote: of what this worker wrote to Redis); "
        "a tier not named: no cap",
    )
    max_sessions: int = Field(0, ge=0, description="sessions it may have open; 0: no cap")

    def to_quota(self) -> TenantQuota:
        return TenantQuota({t: int(b) for t, b in self.max_bytes.items()}, self.max_sessions)


class NamespaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    model: str = Field(min_length=1)
    tenant: str = ""
    adapter: str = ""
    block_tokens: int = Field(16, ge=1, le=1 << 20)
    block_bytes: ByteSize = ByteSize(16 * 131072)
    hash: str = "blake2b"

    @field_validator("hash")
    @classmethod
    def _known_hash(cls, v: str) -> str:
        if v not in HASHES:
            raise ValueError(f"must be one of {', '.join(HASHES)}")
        return v

    @field_validator("block_bytes")
    @classmethod
    def _positive(cls, v: ByteSize) -> ByteSize:
        if v <= 0:
            raise ValueError("must be > 0")
        return v

    def to_namespace(self) -> Namespace:
        return Namespace(
            self.name,
            self.model,
            self.tenant,
            self.adapter,
            self.block_tokens,
            int(self.block_bytes),
            self.hash,
        )


class TracingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="export an OpenTelemetry span per RPC")
    otlp_endpoint: str | None = Field(
        None, description="OTLP/gRPC collector, e.g. http://127.0.0.1:4317 (default: OTEL_* env)"
    )


class AuthConfig(BaseModel):
    """Who may call (README "Security"). Off when no tokens file is given, which is allowed only on
    loopback or a Unix socket unless `allow_unauthenticated` says otherwise."""

    model_config = ConfigDict(extra="forbid")

    tokens_file: Path | None = Field(None, description="YAML/JSON list of {sha256, tenant, role}")
    allow_unauthenticated: bool = Field(
        False, description="serve without tokens on a non-loopback address (anyone who reaches it may call)"
    )


class TlsConfig(BaseModel):
    """TLS for the gRPC port: cert + key turn it on; client_ca also requires client certificates."""

    model_config = ConfigDict(extra="forbid")

    cert: Path | None = Field(None, description="PEM server certificate chain")
    key: Path | None = Field(None, description="PEM private key of the certificate")
    client_ca: Path | None = Field(None, description="PEM CA bundle; when set, clients must present a cert")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("tls.cert and tls.key go together: give both or neither")
        if self.client_ca is not None and self.cert is None:
            raise ValueError("tls.client_ca needs tls.cert and tls.key (mutual TLS is TLS first)")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert is not None


class RemoteConfig(BaseModel):
    """The shared `remote` tier on Redis and the global prefix index (README "Across machines")."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None, description="redis://HOST:PORT/DB (rediss:// for TLS); unset: no remote tier"
    )
    cluster: bool = Field(False, description="the URL names one node of a Redis Cluster")
    capacity: ByteSize = Field(
        ByteSize(8 * 2**30), ge=MIN_CAPACITY, description="bytes of Redis this worker's blocks may take"
    )
    write_through: bool = Field(
        True, description="send every new block to Redis after its put (off: only blocks leaving local tiers)"
    )
    timeout_s: float = Field(0.5, gt=0, le=60, description="bound on every Redis call")

    @field_validator("url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"(rediss?|unix)://", v):
            raise ValueError("must start with redis://, rediss:// or unix://, e.g. redis://127.0.0.1:6379/0")
        return v


def _default_namespaces() -> list[NamespaceConfig]:
    # Llama-3-8B in bf16 is 128 KiB per token; 16-token blocks are vLLM's default block size.
    return [
        NamespaceConfig(name="default", model="default", block_tokens=16, block_bytes=ByteSize(16 * 131072))
    ]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KVSTORE_", env_nested_delimiter="__", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(DEFAULT_PORT, ge=0, le=65535, description="0 picks a free port")
    unix_socket: Path | None = Field(None, description="also listen on this Unix socket (sidecar use)")
    data_dir: Path = Path("./kvstore-data")
    policy: str = "lru"
    promote_on_get: bool = True
    flush_on_shutdown: bool = Field(True, description="move memory-tier blocks to disk on SIGTERM")
    max_message_bytes: ByteSize = ByteSize(256 * 2**20)
    metrics_port: int | None = Field(None, ge=0, le=65535, description="serve Prometheus metrics here")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per line")
    tracing: TracingConfig = TracingConfig()
    hbm: HbmConfig = HbmConfig()
    dram: DramConfig = DramConfig()
    disk: DiskConfig = DiskConfig()
    shared_memory: SharedMemoryConfig = SharedMemoryConfig()
    agent: AgentConfig = AgentConfig()
    ttl: TTLConfig = TTLConfig()
    limits: LimitsConfig = LimitsConfig()
    sessions: SessionsConfig = SessionsConfig()
    namespaces: list[NamespaceConfig] = Field(default_factory=_default_namespaces)
    tenants: dict[str, TenantConfig] = Field(
        default_factory=dict, description="quotas per tenant, by the `tenant:` its namespaces name"
    )
    auth: AuthConfig = AuthConfig()
    tls: TlsConfig = TlsConfig()
    remote: RemoteConfig = RemoteConfig()
    worker_id: str = Field(
        "", max_length=200, description="this worker's name in the global index (default: host:port)"
    )
    advertise_address: str = Field(
        "", max_length=200, description="where routers send this worker's requests (default: host:port)"
    )

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        from kvstore.policy import POLICIES

        if v not in POLICIES:
            raise ValueError(f"must be one of {', '.join(sorted(POLICIES))}")
        return v

    @model_validator(mode="after")
    def _check(self) -> Settings:
        names = [ns.name for ns in self.namespaces]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"namespaces: duplicate name(s) {', '.join(dupes)}")
        if not (self.dram.enabled or self.disk.enabled or self.hbm.enabled != "off"):
            raise ValueError("every tier is disabled; enable at least one of hbm, dram, disk")
        if not self.namespaces:
            raise ValueError("namespaces: the list is empty; configure at least one namespace")
        named = {ns.tenant for ns in self.namespaces}
        for tenant in self.tenants:
            if tenant not in named:  # a typo would leave the real tenant without its quota
                raise ValueError(
                    f"tenants.{tenant}: no namespace has tenant: {tenant!r} "
                    f"(namespaces name {', '.join(repr(t) for t in sorted(named))})"
                )
        tiers = {
            "hbm": int(self.hbm.capacity) if self.hbm.enabled != "off" else 0,
            "dram": int(self.dram.capacity) if self.dram.enabled else 0,
            "disk": int(self.disk.capacity) if self.disk.enabled else 0,
        }
        for i, ns in enumerate(self.namespaces):
            if ns.block_bytes > max(tiers.values()):
                raise ValueError(
                    f"namespaces.{i}.block_bytes ({ns.block_bytes}) is larger than every tier "
                    f"({', '.join(f'{t}={c}' for t, c in tiers.items() if c)}); no block could be stored"
                )
        biggest = max((ns.block_bytes for ns in self.namespaces), default=0)
        if biggest + 4096 > self.max_message_bytes:
            raise ValueError(
                f"max_message_bytes ({self.max_message_bytes}) must exceed the largest "
                f"block_bytes ({biggest}) by at least 4096"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (CLI flags, and the YAML file merged under them by load_settings) beats env.
        return init_settings, env_settings


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _format(exc: ValidationError, source: str, env: bool = False) -> str:
    """One line (what `kvstore serve` prints): each bad field, what is wrong, what it got."""
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if env and err["loc"]:
            field += f" (KVSTORE_{'__'.join(str(p) for p in err['loc']).upper()})"
        got = repr(err.get("input"))
        got = got if len(got) <= 80 else got[:80] + "…"
        problems.append(f"{field}: {err['msg']} (got {got})")
    return f"invalid configuration ({source}): " + "; ".join(problems)


def unknown_env(environ: dict[str, str] | os._Environ[str]) -> list[str]:
    """Warnings for KVSTORE_* variables that name no setting (a typo like KVSTORE_POLCY would
    otherwise be ignored without a word). Nested ones (KVSTORE_DRAM__X) are refused by their
    section; the SDK's and clients' variables are left alone."""
    fields = {f"KVSTORE_{name.upper()}" for name in Settings.model_fields}
    out = []
    for var in sorted(environ):
        top = var.upper().split("__")[0]
        if not top.startswith("KVSTORE_") or top in fields or top.startswith(CLIENT_ENV):
            continue
        close = difflib.get_close_matches(top, sorted(fields), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        out.append(f"environment variable {var} is not a kvstore setting{hint}; it is ignored")
    return out


def _env_error(exc: SettingsError) -> ConfigError:
    """pydantic-settings' error for a value it cannot parse (JSON of a nested field), by variable."""
    match = re.search(r'field "([^"]+)"', str(exc))
    var = f"KVSTORE_{match.group(1).upper()}" if match else "a KVSTORE_* variable"
    return ConfigError(
        f"invalid configuration (environment): {var}: not valid JSON for a nested setting; give JSON "
        f'like \'{{"capacity": "1GiB"}}\', or set one field with {var}__FIELD'
    )


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Settings from YAML (optional) < env < overrides (CLI flags; None values are ignored)."""
    flags = {k: v for k, v in overrides.items() if v is not None}
    from_file: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            from_file = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(from_file, dict):
            raise ConfigError(
                f"config file {path} must hold a mapping of settings, not {type(from_file).__name__}"
            )
    for warning in unknown_env(os.environ):
        log.warning("%s", warning)
    env_only = Settings.model_fields.keys() - flags.keys()
    try:
        env = Settings().model_dump(exclude_unset=True, include=set(env_only)) if env_only else {}
    except ValidationError as exc:
        raise ConfigError(_format(exc, "environment", env=True)) from None
    except SettingsError as exc:
        raise _env_error(exc) from None
    try:
        return Settings(**_merge(_merge(from_file, env), flags))
    except SettingsError as exc:
        raise _env_error(exc) from None
    except ValidationError as exc:
        raise ConfigError(
            _format(exc, str(config_file) if config_file else "flags and environment")
        ) from None
