"""The replay's scenario: model, tier sizes, link speeds, prefill rate, concurrency, hint noise,
and for the routing simulation the workers, the router and the shared remote tier.

Defaults are DESIGN §5's default scenario; every value is printed with the results.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ByteSize, ConfigDict, Field, model_validator

# KV bytes per token in bf16: layers x KV heads x head dim x (K, V) x 2 bytes.
PROFILES = {
    "llama-3-8b": 32 * 8 * 128 * 2 * 2,  # 131,072
    "llama-3-70b": 80 * 8 * 128 * 2 * 2,  # 327,680
    "qwen2.5-7b": 28 * 4 * 128 * 2 * 2,  # 57,344
}
GB = 1e9


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Literal["llama-3-8b", "llama-3-70b", "qwen2.5-7b"] = "llama-3-8b"
    hbm: ByteSize = Field(ByteSize(40 * 2**30), gt=0, description="HBM for the KV cache")
    dram: ByteSize = Field(ByteSize(256 * 2**30), gt=0)
    disk: ByteSize = Field(ByteSize(2 * 2**40), gt=0)
    hbm_dram_gbps: float = Field(50.0, gt=0, description="HBM<->DRAM, GB/s each way")
    disk_read_gbps: float = Field(6.0, gt=0)
    disk_write_gbps: float = Field(3.0, gt=0)
    prefill_tps: float = Field(25_000.0, gt=0, description="prefill tokens/s")
    decode_tps: float = Field(50.0, gt=0, description="decode tokens/s, for traces without api_time")
    sessions: int = Field(8, ge=1, le=10_000, description="concurrent replay slots (closed loop)")
    stagger_s: float = Field(10.0, ge=0, description="slot i starts at i x stagger")
    sigma: float = Field(0.5, ge=0, le=5, description="hint noise: expected = gap x lognormal(0, sigma)")
    seed: int = 0
    hints: bool = Field(True, description="send hints at all (False: a tenant that sends none)")
    user_active_s: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="send UserActive this many s (x lognormal(0, 0.5)) before a person's request",
    )
    hbm_owner: Literal["kvstore", "engine"] = Field(
        "kvstore", description="engine: HBM evicts by the engine's LRU whatever the policy (DESIGN §1)"
    )
    ttl_s: float = Field(10.0, gt=0, description="the ttl baseline's TTL after a tool call begins")
    prefetch_margin_s: float = Field(0.2, ge=0, description="the agent policy's extra prefetch lead")
    workers: int = Field(1, ge=1, le=256, description="workers, each with its own store and tiers")
    router: Literal["round-robin", "cache-only", "cost"] = Field(
        "cost", description="how a request picks its worker (kvstore.bench.route)"
    )
    remote: ByteSize = Field(ByteSize(0), ge=0, description="shared remote tier (0: none), LRU")
    remote_gbps: float = Field(
        12.5,
        gt=0,
        description="remote tier -> a worker's HBM, GB/s (100 Gb/s; at 10 Gb/s recompute is faster)",
    )

    @model_validator(mode="after")
    def _remote_beats_recompute(self) -> Scenario:
        if self.remote and self.bytes_per_token / (self.remote_gbps * GB) >= 1 / self.prefill_tps:
            raise ValueError(
                f"a remote tier at {self.remote_gbps} GB/s is slower than recomputing at "
                f"{self.prefill_tps:,.0f} tokens/s of {self.bytes_per_token:,} B: an engine would "
                "recompute; raise remote_gbps or drop the remote tier"
            )
        return self

    @property
    def bytes_per_token(self) -> int:
        return PROFILES[self.model]

    def link_bandwidths(self) -> dict[tuple[str, str], float]:
        hd, rd, wr = self.hbm_dram_gbps * GB, self.disk_read_gbps * GB, self.disk_write_gbps * GB
        return {
            ("hbm", "dram"): hd,
            ("dram", "hbm"): hd,
            ("disk", "hbm"): rd,
            ("disk", "dram"): rd,
            ("dram", "disk"): wr,
            ("hbm", "disk"): wr,
        }

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = self.model_dump()
        out["bytes_per_token"] = self.bytes_per_token
        for k in ("hbm", "dram", "disk", "remote"):
            out[k] = ByteSize(out[k]).human_readable(decimal=False)
        return out
