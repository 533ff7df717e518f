"""KV-aware routing: which worker should take a request, as a pure cost over what each holds.

One function for both drivers: `Admin.Route` ranks the workers of the global index with it, and
the replay's multi-worker simulation ranks its simulated workers with the same call. The cost of
sending a prompt to a worker is the prefill work it would still do, in tokens:

    cost = tokens not covered by the worker's cached prefix
         + sum over tiers of (tokens covered from that tier x the tier's fetch penalty)
         + load_weight x the worker's load (pending work, in tokens)

A router that only chases hits piles sessions onto the workers that hold them; the load term is
what spreads them. The penalty says how much of a recompute it costs to bring a block up from a
slower tier (a block in HBM is free, one in Redis crosses the network).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Fraction of a token's prefill cost paid to bring it from each tier to the engine's HBM. The
# defaults are round figures from the replay's link model (PCIe ~25 GB/s, NVMe ~3 GB/s, a 10 Gb/s
# network) against prefill at ~10k tokens/s for a 70B model, not measurements of a deployment.
DEFAULT_TIER_PENALTY: Mapping[str, float] = {"hbm": 0.0, "dram": 0.02, "disk": 0.15, "remote": 0.3}


@dataclass(frozen=True)
class RouteCost:
    """The knobs of the cost. `load_weight` says how many tokens of prefill one token of pending
    work is worth: 0 chases hits only, large values balance load only."""

    load_weight: float = 1.0
    tier_penalty: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TIER_PENALTY))

    def __post_init__(self) -> None:
        if self.load_weight < 0:
            raise ValueError(f"load_weight must be >= 0, not {self.load_weight}")
        for tier, penalty in self.tier_penalty.items():
            if not 0.0 <= penalty <= 1.0:
                raise ValueError(f"tier_penalty[{tier!r}] must be within [0, 1], not {penalty}")


@dataclass(frozen=True)
class WorkerView:
    """What the router knows of one worker for one prompt: how many of the prompt's leading blocks
    it holds, counted per tier (the counts add up to the cached prefix), and its pending work."""

    worker: str
    address: str
    prefix_blocks: Mapping[str, int]
    load: float = 0.0

    @property
    def cached_blocks(self) -> int:
        return sum(self.prefix_blocks.values())


@dataclass(frozen=True)
class Ranked:
    view: WorkerView
    cost: float
    uncovered_tokens: int


def route_cost(view: WorkerView, prompt_tokens: int, block_tokens: int, cost: RouteCost) -> Ranked:
    covered = min(view.cached_blocks * block_tokens, prompt_tokens)
    fetch = 0.0
    left = covered
    for tier, blocks in view.prefix_blocks.items():
        tokens = min(blocks * block_tokens, left)
        left -= tokens
        fetch += tokens * cost.tier_penalty.get(tier, 1.0)
    uncovered = prompt_tokens - covered
    return Ranked(view, uncovered + fetch + cost.load_weight * view.load, uncovered)


def rank(
    views: Iterable[WorkerView], prompt_tokens: int, block_tokens: int, cost: RouteCost | None = None
) -> list[Ranked]:
    """Workers best first: lowest cost, then least load, then worker id (a stable order)."""
    if prompt_tokens < 0 or block_tokens <= 0:
        raise ValueError("prompt_tokens must be >= 0 and block_tokens > 0")
    cost = cost or RouteCost()
    ranked = [route_cost(v, prompt_tokens, block_tokens, cost) for v in views]
    ranked.sort(key=lambda r: (r.cost, r.view.load, r.view.worker))
    return ranked
