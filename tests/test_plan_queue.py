"""PlanQueue against a plain model: due plans in order, a session's plans gone once it moved on,
and `pending` counting exactly the plans that can still run (dropped rows are removed lazily)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.mover import PRIORITY, PlanQueue
from kvstore.plans import Plan, PlanKind

SESSIONS = ["a", "b", "c"]

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("push"),
            st.sampled_from([*SESSIONS, ""]),
            st.integers(0, 4),  # generation offset from the session's current one (0 or 1: now/next)
            st.integers(0, 50),  # not_before
            st.sampled_from([PlanKind.OFFLOAD, PlanKind.WARM, PlanKind.CHECK]),
        ),
        st.tuples(st.just("forget"), st.sampled_from(SESSIONS), st.integers(0, 2)),
        st.tuples(st.just("pop"), st.integers(0, 60)),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_plan_queue_matches_a_plain_model(steps: list[tuple]) -> None:
    queue = PlanQueue()
    model: list[tuple[float, int, int, Plan]] = []  # live plans, eagerly filtered
    generation = dict.fromkeys(SESSIONS, 0)
    seq = 0
    for step in steps:
        if step[0] == "push":
            _, session, offset, at, kind = step
            gen = -1 if not session else max(-1, generation[session] + offset - 2)  # older, current, newer
            plan = Plan(kind, float(at), session, gen)
            queue.push(plan)
            if session and gen >= 0:
                if gen < generation[session]:
                    continue  # planned before its session moved on: never runs
                if gen > generation[session]:
                    generation[session] = gen
                    model = [row for row in model if row[3].session != session or not 0 <= row[3].generation < gen]
            model.append((plan.not_before, PRIORITY[kind], seq, plan))
            seq += 1
        elif step[0] == "forget":
            _, session, bump = step
            if bump and any(row[3].session == session for row in model):
                generation[session] += bump
                queue.forget(session, generation[session])
                model = [row for row in model if row[3].session != session or row[3].generation < 0]
        else:
            now = float(step[1])
            due = sorted(row for row in model if row[0] <= now)
            model = [row for row in model if row[0] > now]
            assert queue.pop_due(now) == [row[3] for row in sorted(due, key=lambda r: (r[1], r[2]))]
        assert queue.pending == len(model)
        assert queue.next_due() == (min(row[0] for row in model) if model else None)
