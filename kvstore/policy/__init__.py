"""Placement policies: which block leaves a tier first under pressure, and what hints do."""

from __future__ import annotations

from kvstore.config import AgentConfig
from kvstore.policy.agent import AgentPolicy
from kvstore.policy.base import Policy
from kvstore.policy.lru import LRUPolicy
from kvstore.policy.ttl import TTLPolicy

POLICIES: dict[str, type[Policy]] = {"lru": LRUPolicy, "agent": AgentPolicy, "ttl": TTLPolicy}


def make_policy(name: str, agent: AgentConfig | None = None) -> Policy:
    if name == "agent":
        return AgentPolicy(agent)
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(sorted(POLICIES))}") from None


__all__ = ["POLICIES", "AgentPolicy", "LRUPolicy", "Policy", "TTLPolicy", "make_policy"]
