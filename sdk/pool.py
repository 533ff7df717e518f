"""Per-session state for a process that serves many sessions (a proxy, a framework callback).

Bounded: past `max_items`, the least recently used entry is forgotten here. Forgetting closes
nothing in kvstore, which expires idle sessions itself.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SessionPool(Generic[T]):
    """Values by session id, made by `make(session_id)` on first use; thread-safe."""

    def __init__(self, make: Callable[[str], T], max_items: int = 10_000) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self._make = make
        self._max = max_items
        self._items: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str) -> T:
        with self._lock:
            item = self._items.get(session_id)
            if item is None:
                item = self._items[session_id] = self._make(session_id)
                while len(self._items) > self._max:
                    self._items.popitem(last=False)
            else:
                self._items.move_to_end(session_id)
            return item

    def peek(self, session_id: str) -> T | None:
        """The value if present, without making one or changing its recency."""
        with self._lock:
            return self._items.get(session_id)

    def pop(self, session_id: str) -> T | None:
        with self._lock:
            return self._items.pop(session_id, None)

    def items(self) -> list[tuple[str, T]]:
        """A snapshot, least recently used first."""
        with self._lock:
            return list(self._items.items())

    def __len__(self) -> int:
        return len(self._items)
