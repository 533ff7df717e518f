"""Placement policies: which block leaves a tier first under pressure."""

from kvstore.policy.base import Policy
from kvstore.policy.lru import LRUPolicy

POLICIES: dict[str, type[Policy]] = {"lru": LRUPolicy}


def make_policy(name: str) -> Policy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(sorted(POLICIES))}") from None


__all__ = ["POLICIES", "LRUPolicy", "Policy", "make_policy"]
