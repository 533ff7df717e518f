"""Plans: what a policy decides, as values (DESIGN §2).

A plan says what to do for which session, and not before when: bring its blocks back to a tier,
move them down, pin or release a fan-out, tell an engine to warm its cache, or look again (a
check). Policies return plans; the
mover queues them (`mover.PlanQueue`) and one place executes them (`sessions.actions`). A plan
carries its session's generation when it was made: once the session has moved on (a new hint, a
request), the plan is stale and is dropped, never run.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class PlanKind(str, enum.Enum):
    CHECK = "check"  # ask the policy again (it may return more plans)
    BRING_BACK = "bring_back"  # move the session's blocks up into a tier, displacing only lower scores
    OFFLOAD = "offload"  # move the session's top-tier blocks one tier down
    PIN_FANOUT = "pin_fanout"  # load the session's prefix into the top tier and pin it
    RELEASE_FANOUT = "release_fanout"  # unpin it (last branch done, or the TTL passed)
    WARM = "warm"  # tell subscribers the session is due back (an engine then warms its own cache)


@dataclass(frozen=True, slots=True)
class Plan:
    kind: PlanKind
    not_before: float
    session: str = ""  # "" for a check of the whole store
    generation: int = -1  # the session's generation when planned (-1: not tied to one)
    level: int = 0  # BRING_BACK: the tier to bring blocks into
    below: float | None = None  # BRING_BACK: displace only blocks the policy scores under this
    ref: str = ""  # a fan-out id, or what a policy's check is about
