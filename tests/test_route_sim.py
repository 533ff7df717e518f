"""The replay's routing simulation: N workers with their own stores on one clock, a global index,
and the routers (round-robin, cache-only, cost) compared on figures that could go either way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ByteSize, ValidationError
from test_replay import three_requests

from kvstore.bench.replay import Replay
from kvstore.bench.scenario import Scenario
from kvstore.bench.traces import read_trace
from kvstore.cli import main as kvstore_main
from kvstore.store import Store

GiB = 2**30


def routed(traces: list, router: str, workers: int = 4, policy: str = "lru-offload", **knobs) -> dict:
    return Replay(traces, policy, Scenario(workers=workers, router=router, **knobs)).run()


def test_a_session_moved_off_its_worker_recomputes_its_prefix_figures_by_hand(tmp_path: Path) -> None:
    trace = read_trace(three_requests(tmp_path))  # 8, 12, 16 tokens; blocks [1,2], [1,2,3], [1,2,3,4]
    # round-robin: r0 on w0 (8), r1 on w1 with nothing cached there (12), r2 back on w0 holding
    # blocks 1,2 (8): 28 prefilled against 16 for one unbounded worker
    rr = routed([trace], "round-robin", workers=2)
    assert rr["prefill_amplification"] == pytest.approx(28 / 16)
    # work (prefilled + 10 decoded per request): w0 8+10+8+10 = 36, w1 12+10 = 22
    assert rr["load_imbalance"] == pytest.approx(36 / ((36 + 22) / 2))
    assert rr["warm_resume_rate"] == 0.0  # neither resume finds its whole prefix where it lands
    cost = routed([trace], "cost", workers=2)
    assert cost["prefill_amplification"] == 1.0 and cost["warm_resume_rate"] == 1.0
    assert cost["load_imbalance"] == 2.0  # one session, kept where its KV is
    # r2's 4 blocks exceed a 1.5 MiB HBM: prefilled whole (16) though 12 of its tokens were computed;
    # the fitting figure leaves it out
    small = routed([trace], "cost", workers=2, hbm=ByteSize(3 * 2**19))
    assert small["oversize_requests"] == 1
    assert small["prefill_amplification"] == pytest.approx((8 + 4 + 16) / 16)
    assert small["prefill_amplification_fitting"] == 1.0
    # with a shared remote tier (written through on every put) r1 on w1 reads blocks 1,2 and r2 on
    # w0 block 3 instead of prefilling them
    remote = routed([trace], "round-robin", workers=2, remote=ByteSize(GiB))
    assert remote["prefill_amplification"] == 1.0
    assert remote["remote_read_gib"] == pytest.approx(3 * 4 * 131072 / GiB)


def test_one_worker_gives_the_plain_replay_whatever_the_router(traces_dir: Path) -> None:
    traces = [read_trace(traces_dir / "agentic" / "trace_0007.json")]
    figures = [routed(traces, r, workers=1, sessions=2)["per_trace"] for r in ("round-robin", "cost")]
    assert figures[0] == figures[1]


def test_cost_beats_round_robin_and_spreads_load_better_than_cache_only(traces_dir: Path) -> None:
    traces = [read_trace(traces_dir / "agentic" / f"trace_{n}.json") for n in ("0002", "0006", "0404")]
    runs = {r: routed(traces, r, sessions=16) for r in ("round-robin", "cache-only", "cost")}
    assert runs["cost"]["prefill_amplification"] < runs["round-robin"]["prefill_amplification"]
    assert runs["cost"]["cache_stall_mean"] < runs["round-robin"]["cache_stall_mean"]
    assert runs["cache-only"]["load_imbalance"] > runs["cost"]["load_imbalance"]
    assert runs["cache-only"]["load_imbalance"] == 4.0  # ties go to w0: everything lands there
    assert runs["round-robin"]["load_imbalance"] < 1.2


def test_routing_is_deterministic_and_keeps_every_worker_within_its_tiers(traces_dir: Path) -> None:
    traces = [read_trace(traces_dir / "agentic" / f"trace_{n}.json") for n in ("0007", "0404")]
    checked = []

    def check(store: Store) -> None:
        for tier in store.tiers:
            assert tier.used <= tier.capacity, (tier.name, tier.used, tier.capacity)
        checked.append(1)

    scenario = Scenario(workers=3, router="round-robin", sessions=6, hbm=ByteSize(20 * GiB))
    # the agent policy with hints: sessions move every request, their tool calls end where they began
    a, b = (Replay(traces, "agent", scenario, observer=check).run() for _ in range(2))
    keys = [k for k in a if not k.startswith(("replay_wall", "requests_per", "block_ops"))]
    assert [a[k] for k in keys] == [b[k] for k in keys]
    assert checked and a["prefill_amplification"] > 1.0


def test_a_remote_tier_slower_than_recompute_is_refused() -> None:
    with pytest.raises(ValidationError, match="slower than recomputing"):
        Scenario(remote=ByteSize(GiB), remote_gbps=1.25)
    assert Scenario(remote_gbps=1.25).remote == 0  # no remote tier: nothing to refuse


def test_cli_writes_a_table_per_router_and_rejects_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = three_requests(tmp_path)
    out, md = tmp_path / "route.json", tmp_path / "route.md"
    args = [
        "bench",
        "route",
        "--traces",
        str(trace),
        "--workers",
        "2",
        "--jobs",
        "1",
        "--policy",
        "lru-offload",
    ]
    assert kvstore_main([*args, "--remote", "1GiB", "--json", str(out), "--markdown", str(md)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {
        "round-robin",
        "cache-only",
        "cost",
        "round-robin +remote",
        "cache-only +remote",
        "cost +remote",
    }
    assert doc["results"]["round-robin"]["prefill_amplification"] == pytest.approx(28 / 16)
    assert doc["scenario"]["workers"] == 2 and doc["scenario"]["sessions"] == 16
    assert "| hand.json |" in md.read_text()
    capsys.readouterr()
    assert kvstore_main([*args, "--routers", "cost,random"]) == 2
    assert "unknown routers ['random']" in capsys.readouterr().err
    assert kvstore_main([*args, "--workers", "0"]) == 2
    assert "workers" in capsys.readouterr().err
    assert kvstore_main([*args, "--remote", "1GiB", "--remote-gbps", "1"]) == 2
    assert "slower than recomputing" in capsys.readouterr().err
