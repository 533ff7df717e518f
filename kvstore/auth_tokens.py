"""Bearer tokens: the tokens file the server reads, and minting new tokens.

The file lists, per token, the SHA-256 of the token (hex), the tenant it acts for and its role;
the raw tokens are never stored, so a leaked file grants nothing. YAML or JSON (JSON is YAML):

    tokens:
      - {sha256: 3f1c…, tenant: acme, role: engine, name: vllm-0}
      - {sha256: 9a0b…, tenant: acme, role: agent}
      - {sha256: 77de…, tenant: ops, role: admin}

`kvstore token new --tenant acme --role engine` prints a fresh token and its entry.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kvstore.config import ConfigError

Role = Literal["engine", "agent", "admin"]
ROLES: tuple[Role, ...] = ("engine", "agent", "admin")
TOKEN_PREFIX = "kvs_"  # makes a leaked token easy to spot by secret scanners and in logs


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a valid token speaks for."""

    tenant: str
    role: Role
    name: str = ""

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class TokenEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the raw token")
    tenant: str = Field("", max_length=200, description="namespaces with this `tenant:` are the caller's")
    role: Role
    name: str = Field("", max_length=200, description="a label for logs; never checked")


class TokensFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[TokenEntry]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """256 random bits: unguessable, so a plain hash (no salt, no KDF) is enough to store it."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenTable:
    def __init__(self, entries: list[TokenEntry]) -> None:
        self._by_hash = {e.sha256: Identity(e.tenant, e.role, e.name) for e in entries}

    def __len__(self) -> int:
        return len(self._by_hash)

    def identify(self, token: str) -> Identity | None:
        # Looked up by hash: what the comparison could leak by timing is the hash, not the token.
        return self._by_hash.get(hash_token(token))


def load_tokens(path: Path) -> TokenTable:
    """The table from a tokens file; ConfigError naming the file and the entry when it is wrong."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read auth tokens file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"auth tokens file {path} is not valid YAML or JSON: {exc}") from None
    if isinstance(raw, list):  # a bare list of entries is accepted too
        raw = {"tokens": raw}
    try:
        parsed = TokensFile.model_validate(raw)
    except ValidationError as exc:
        lines = [f"auth tokens file {path} is invalid:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None
    hashes = [e.sha256 for e in parsed.tokens]
    if len(set(hashes)) != len(hashes):
        raise ConfigError(f"auth tokens file {path} lists the same token twice")
    if not parsed.tokens:
        raise ConfigError(f"auth tokens file {path} lists no tokens: nobody could call the server")
    return TokenTable(parsed.tokens)


def entry_yaml(token: str, tenant: str, role: Role, name: str = "") -> str:
    """The tokens-file entry for `token`, as a YAML list item."""
    entry = {"sha256": hash_token(token), "tenant": tenant, "role": role}
    if name:
        entry["name"] = name
    return yaml.safe_dump([entry], sort_keys=False)
