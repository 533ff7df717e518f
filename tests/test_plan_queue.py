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
                    model = [
                        row for row in model if row[3].session != session or not 0 <= row[3].generation < gen
                    ]
            model.append((plan.not_before, PRIORITY[kind], seq, plan))
            seq += 1
        elif step[0] == "forget":
            _, session, bump = step
            if bump:
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


def test_the_mover_sleeps_until_a_plan_is_due_and_wakes_for_a_sooner_one() -> None:
    import threading
    import time

    queue = PlanQueue()
    now = time.monotonic()
    queue.push(Plan(PlanKind.OFFLOAD, now - 1.0, "a", 0))
    queue.sleep(time.monotonic())  # one is due: no sleep at all (it would hang without a timeout)
    assert [p.session for p in queue.pop_due(time.monotonic())] == ["a"]

    queue.push(Plan(PlanKind.WARM, time.monotonic() + 3600.0, "b", 0))
    woke = threading.Event()

    def mover() -> None:
        queue.sleep(time.monotonic())
        woke.set()

    thread = threading.Thread(target=mover)
    thread.start()
    assert not woke.wait(0.2)  # the only plan is an hour away
    queue.push(Plan(PlanKind.OFFLOAD, time.monotonic(), "c", 0))  # due now: the mover wakes
    assert woke.wait(10.0)
    thread.join()

    woke.clear()
    thread = threading.Thread(target=mover)
    thread.start()
    queue.pop_due(time.monotonic())
    queue.wake()  # shutdown, or a lease due sooner
    assert woke.wait(10.0)
    thread.join()
