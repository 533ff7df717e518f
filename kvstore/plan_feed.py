"""Warm plans, broadcast to subscribers (the WatchPlans RPC).

Engines own their HBM (DESIGN §1): kvstore can bring a session's KV back to its own tiers, but
only a request through the engine puts it in the engine's cache. So when the agent policy expects
a session back soon (a tool call nearing its learned return window, a person typing), it plans a
"warm": executed, it is published here, and an engine-side helper (integrations/vllm/warm.py)
turns it into a one-token request for the session's last prompt before the session is due.

Publishing happens on the mover's thread and must never block. Each subscriber has a bounded
queue; when a subscriber reads too slowly its oldest events are dropped and counted, and the
store never waits for it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvstore.sessions import Session

log = logging.getLogger(__name__)

KINDS = ("warm",)
QUEUE_EVENTS = 1024  # per subscriber


@dataclass(frozen=True, slots=True)
class PlanEvent:
    kind: str
    session: str
    namespace: str
    due_in_s: float  # seconds from `published` until the session is expected back (>= 0)
    bytes: int
    published: float  # time.monotonic() when published

    def due_in_s_at(self, now: float) -> float:
        """Seconds still to go at monotonic time `now` (0 once due)."""
        return max(0.0, self.due_in_s - (now - self.published))


class Subscription:
    """One subscriber's bounded queue. `wake` is called (from the publishing thread) after an
    event is queued; it must not block."""

    def __init__(
        self, namespace: str, kinds: Iterable[str], wake: Callable[[], None], maxlen: int = QUEUE_EVENTS
    ) -> None:
        self.namespace = namespace
        self.kinds = frozenset(kinds)
        self._wake = wake
        self._events: deque[PlanEvent] = deque()
        self._maxlen = maxlen
        self._dropped = 0
        self._lock = threading.Lock()

    def wants(self, event: PlanEvent) -> bool:
        return (not self.namespace or event.namespace == self.namespace) and (
            not self.kinds or event.kind in self.kinds
        )

    def offer(self, event: PlanEvent) -> None:
        with self._lock:
            if len(self._events) >= self._maxlen:
                self._events.popleft()
                self._dropped += 1
            self._events.append(event)
        try:
            self._wake()
        except RuntimeError:  # the subscriber's event loop is gone; it unsubscribes on its way out
            log.debug("plan subscriber gone")

    def drain(self) -> tuple[list[PlanEvent], int]:
        """Queued events, oldest first, and how many were dropped before them."""
        with self._lock:
            events, dropped = list(self._events), self._dropped
            self._events.clear()
            self._dropped = 0
        return events, dropped


class PlanFeed:
    def __init__(self) -> None:
        self._subscribers: list[Subscription] = []
        self._lock = threading.Lock()

    def subscribe(self, subscription: Subscription) -> Subscription:
        with self._lock:
            self._subscribers = [*self._subscribers, subscription]
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers = [s for s in self._subscribers if s is not subscription]

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, event: PlanEvent) -> None:
        for subscription in self._subscribers:  # a copy-on-write list: no lock needed to read it
            if subscription.wants(event):
                subscription.offer(event)

    def warm(self, session: Session, due_in_s: float) -> None:
        """`session` is expected back in `due_in_s`: its KV should be in the engine's cache by then."""
        if self._subscribers:
            due = max(0.0, due_in_s) if math.isfinite(due_in_s) else 0.0
            now = time.monotonic()
            self.publish(PlanEvent("warm", session.id, session.namespace, due, session.total_bytes, now))
