"""Placement policies: which block leaves a tier first under pressure, and what hints do."""

from __future__ import annotations

from kvstore.policy.agent import AgentConfig, AgentPolicy
from kvstore.policy.base import Policy, PolicyView
from kvstore.policy.lru import LRUPolicy
from kvstore.policy.ttl import TTLConfig, TTLPolicy

POLICIES: dict[str, type[Policy]] = {"lru": LRUPolicy, "agent": AgentPolicy, "ttl": TTLPolicy}


def make_policy(
    name: str,
    view: PolicyView,
    agent: AgentConfig | None = None,
    ttl: TTLConfig | None = None,
    engine_owns_top: bool = False,
) -> Policy:
    """`engine_owns_top`: the top tier is an engine's KV pool, evicted by the engine's LRU (the agent
    policy then acts there only by warming sessions back in)."""
    if name == "agent":
        return AgentPolicy(view, agent, engine_owns_top)
    if name == "ttl":
        return TTLPolicy(view, ttl)
    if name == "lru":
        return LRUPolicy(view)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(sorted(POLICIES))}")


__all__ = [
    "POLICIES",
    "AgentConfig",
    "AgentPolicy",
    "LRUPolicy",
    "Policy",
    "PolicyView",
    "TTLConfig",
    "TTLPolicy",
    "make_policy",
]
