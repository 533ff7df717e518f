"""Checks on the replay simulator itself: invariants at every virtual instant, figures computed
by hand for a hand-made trace, and the relations between policies that must hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvstore.bench.replay import Replay
from kvstore.bench.report import percentile
from kvstore.bench.scenario import Scenario
from kvstore.bench.traces import TraceError, gaps, read_trace
from kvstore.cli import main as kvstore_main
from kvstore.store import Store

GiB = 2**30
BLOCK_BYTES = 4 * 131072  # 4-token blocks of llama-3-8b


def write_session(path: Path, requests: list[dict]) -> Path:
    path.write_text(json.dumps({"id": path.stem, "block_size": 4, "requests": requests}))
    return path


def three_requests(tmp_path: Path) -> Path:
    return write_session(
        tmp_path / "hand.json",
        [
            {
                "t": 0,
                "in": 8,
                "out": 10,
                "hash_ids": [1, 2],
                "stop": "tool_use",
                "api_time": 1.0,
                "think_time": 0,
            },
            {
                "t": 3,
                "in": 12,
                "out": 10,
                "hash_ids": [1, 2, 3],
                "stop": "end_turn",
                "api_time": 1.0,
                "think_time": 2.0,
            },
            {
                "t": 9,
                "in": 16,
                "out": 10,
                "hash_ids": [1, 2, 3, 4],
                "stop": "end_turn",
                "api_time": 1.0,
                "think_time": 5.0,
            },
        ],
    )


def test_a_hand_made_trace_gives_the_figures_computed_by_hand(tmp_path: Path) -> None:
    trace = read_trace(three_requests(tmp_path))
    f = Replay([trace], "lru-offload", Scenario()).run()
    # r0 at t=0 prefills 8 tokens; r1 arrives at 1+2=3 with blocks 1,2 in HBM (prefills 4);
    # r2 arrives at 4+5=9 with blocks 1,2,3 in HBM (prefills 4); the last ends at 10.
    assert f["requests"] == 3 and f["resumed_requests"] == 2
    assert f["warm_resume_rate"] == 1.0
    assert f["prefill_amplification"] == 1.0  # 16 prefilled / 16 new
    assert f["first_ttft_p50"] == pytest.approx(8 / 25_000)
    assert f["resume_ttft_p50"] == pytest.approx(4 / 25_000)
    assert f["bytes_moved_per_reused_byte"] == 0.0
    assert f["virtual_s"] == pytest.approx(10.0)
    # idle in HBM: 2 blocks for 2 s (1..3), 3 blocks for 5 s (4..9)
    assert f["hbm_idle_gib_s"] == pytest.approx((2 * 2 + 3 * 5) * BLOCK_BYTES / GiB)
    r = Replay([trace], "recompute", Scenario()).run()
    assert r["warm_resume_rate"] == 0.0
    assert r["prefill_amplification"] == pytest.approx((8 + 12 + 16) / 16)


def test_recompute_prefills_every_input_token(traces_dir: Path) -> None:
    trace = read_trace(traces_dir / "agentic" / "trace_0002.json")
    replay = Replay([trace], "recompute", Scenario())
    replay.run()
    assert replay.tally.prefilled_tokens == sum(r.in_tokens for r in trace.sessions[0].requests)


def test_capacities_are_never_exceeded_at_any_instant(traces_dir: Path) -> None:
    traces = [read_trace(traces_dir / "agentic" / f) for f in ("trace_0002.json", "trace_0007.json")]
    checks = []

    def check(store: Store) -> None:
        for tier in store.tiers:
            assert tier.used <= tier.capacity, (tier.name, tier.used, tier.capacity)
        checks.append(1)

    # HBM as small as the largest request allows, so every policy is under pressure
    scenario = Scenario(
        hbm=ByteSize_of(18 * GiB), dram=ByteSize_of(24 * GiB), disk=ByteSize_of(64 * GiB), sessions=4
    )
    for policy in ("lru", "lru-offload", "ttl", "agent", "oracle"):
        Replay(traces, policy, scenario, observer=check).run()
    assert len(checks) > 100


def ByteSize_of(n: int):
    from pydantic import ByteSize

    return ByteSize(n)


def test_with_unbounded_hbm_every_caching_policy_prefills_the_same(traces_dir: Path) -> None:
    traces = [read_trace(traces_dir / "agentic" / f) for f in ("trace_0002.json", "trace_0007.json")]
    scenario = Scenario(hbm=ByteSize_of(4096 * GiB))
    amps = {
        p: Replay(traces, p, scenario).run()["prefill_amplification"]
        for p in ("lru", "lru-offload", "ttl", "agent", "oracle")
    }
    assert len(set(amps.values())) == 1, amps
    assert amps["lru"] == pytest.approx(1.0)


def test_oracle_is_never_worse_than_agent_on_shared_traces(traces_dir: Path) -> None:
    names = ("0002", "0006", "0007", "0404", "0408", "0464")
    traces = [read_trace(traces_dir / "agentic" / f"trace_{n}.json") for n in names]
    scenario = Scenario(sessions=4)
    oracle = Replay(traces, "oracle", scenario).run()
    agent = Replay(traces, "agent", scenario).run()
    assert oracle["warm_resume_rate"] >= agent["warm_resume_rate"]


def test_replay_is_deterministic_for_a_seed(traces_dir: Path) -> None:
    trace = [read_trace(traces_dir / "agentic" / "trace_0007.json")]
    a, b = (Replay(trace, "agent", Scenario(seed=3)).run() for _ in range(2))
    keys = [k for k in a if not k.startswith(("replay_wall", "requests_per", "block_ops"))]
    assert [a[k] for k in keys] == [b[k] for k in keys]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"block_size": 64, "requests": [{"t": 0, "in": 5, "out": 1, "api_time": 1}]}',
            r"request 0: missing field 'hash_ids'",
        ),
        (
            '{"block_size": 64, "requests": [{"t": 0, "in": -5, "out": 1, "hash_ids": [], "api_time": 1}]}',
            r"'in' must be >= 0",
        ),
        (
            '{"block_size": 64, "requests": [{"t": "soon", "in": 5, "out": 1, "hash_ids": [], '
            '"api_time": 1}]}',
            r"'t' must be",
        ),
        ('{"requests": []}', r"missing field 'block_size'"),
        ("[1, 2]", r"must hold one JSON object"),
        ("{nope", r"not valid JSON"),
    ],
)
def test_malformed_agentic_traces_name_file_request_and_field(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(TraceError, match=message) as err:
        read_trace(path)
    assert str(path) in str(err.value)


def test_malformed_mooncake_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}\n'
        '{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": ["x"]}\n'
    )
    with pytest.raises(TraceError, match=r"bad.jsonl line 2: field 'hash_ids'"):
        read_trace(path)


def test_a_request_larger_than_hbm_is_counted_and_prefilled_not_cached(tmp_path: Path) -> None:
    trace = read_trace(three_requests(tmp_path))  # 2, 3 and 4 blocks
    f = Replay([trace], "agent", Scenario(hbm=ByteSize_of(2 * BLOCK_BYTES))).run()
    assert f["requests"] == 3 and f["oversize_requests"] == 2
    assert f["resumed_requests"] == 0  # no cache could hold them: not a resume a policy controls
    assert f["prefill_amplification"] == pytest.approx((8 + 12 + 16) / 16)
    assert f["oversize_ttft_p50"] == pytest.approx(percentile([12 / 25_000, 16 / 25_000], 50))  # whole


def two_sessions(tmp_path: Path) -> list:
    """X computes blocks 1, 2, goes to a tool for 9 s, and resumes with 1, 2, 3; meanwhile Y's
    request needs all of a 3-block HBM."""
    x = write_session(
        tmp_path / "x.json",
        [
            {"t": 0, "in": 8, "out": 1, "hash_ids": [1, 2], "stop": "tool_use", "api_time": 1.0},
            {
                "t": 10,
                "in": 12,
                "out": 1,
                "hash_ids": [1, 2, 3],
                "stop": "end_turn",
                "api_time": 1.0,
                "think_time": 9.0,
            },
        ],
    )
    y = write_session(
        tmp_path / "y.json", [{"t": 0, "in": 12, "out": 1, "hash_ids": [7, 8, 9], "api_time": 1.0}]
    )
    return [read_trace(x), read_trace(y)]


@pytest.mark.parametrize("policy", ["lru", "lru-offload"])
def test_cache_stall_is_load_stall_plus_recompute_of_a_lost_prefix(tmp_path: Path, policy: str) -> None:
    scenario = Scenario(hbm=ByteSize_of(3 * BLOCK_BYTES), sessions=2, stagger_s=5.0)
    f = Replay(two_sessions(tmp_path), policy, scenario).run()
    assert f["resumed_requests"] == 1 and f["warm_resume_rate"] == 0.0 and f["room_wait_p99"] == 0.0
    if policy == "lru":  # X's blocks were dropped for Y's: 8 tokens of its prefix are prefilled again
        stall, prefilled = 8 / 25_000, 12
    else:  # demoted to DRAM: 2 blocks come back over the link, only the new block is prefilled
        stall, prefilled = 2 * BLOCK_BYTES / 50e9, 4
    assert f["cache_stall_mean"] == pytest.approx(stall)
    assert f["resume_ttft_p50"] == pytest.approx(
        stall + 4 / 25_000 if policy != "lru" else prefilled / 25_000
    )


def test_the_reader_takes_every_shared_trace(traces_dir: Path) -> None:
    paths = sorted((traces_dir / "agentic").glob("*.json"))
    assert len(paths) >= 39
    traces = [read_trace(p) for p in paths]
    requests = [r for t in traces for s in t.sessions for r in s.requests]
    assert any(r.api_time is None for r in requests) and any(r.stop == "" for r in requests)
    for t in traces:
        for hold, think in gaps(t.sessions[0].requests, Scenario().decode_tps):
            assert hold >= 0 and think >= 0


def test_absent_timing_falls_back_to_the_gap_between_sends(tmp_path: Path) -> None:
    trace = read_trace(
        write_session(
            tmp_path / "s.json",
            [
                {"t": 0, "type": "s", "in": 8, "out": 50, "hash_ids": [1, 2], "stop": ""},
                {"t": 13, "type": "s", "in": 8, "out": 10, "hash_ids": [1, 2], "api_time": 2.0},
                {"t": 20, "in": 8, "out": 10, "hash_ids": [1, 2], "api_time": 1.0, "think_time": 4.0},
            ],
        )
    )
    # no api_time: held 50 tokens / 50 tok/s = 1 s, the rest of the 13 s is the client's; then
    # the recorded fields; the last request keeps its api_time
    assert gaps(trace.sessions[0].requests, 50.0) == [(1.0, 12.0), (2.0, 4.0), (1.0, 0.0)]


def shared(traces_dir: Path, *names: str) -> list:
    return [read_trace(traces_dir / "agentic" / f"trace_{n}.json") for n in names]


def test_without_hints_the_agent_policy_does_about_as_well_as_lru_offload(traces_dir: Path) -> None:
    traces = shared(traces_dir, "0001", "0006", "0010", "0277")
    scenario = Scenario(hints=False, sessions=4)
    agent = Replay(traces, "agent", scenario).run()
    lru = Replay(traces, "lru-offload", scenario).run()
    assert agent["warm_resume_rate"] >= lru["warm_resume_rate"] - 0.01
    assert agent["cache_stall_mean"] <= lru["cache_stall_mean"] * 1.1


def test_the_user_activity_hint_warms_resumes_after_people(traces_dir: Path) -> None:
    traces = shared(traces_dir, "0001", "0010", "0254", "0282")
    scenario = Scenario(sessions=4)
    without = Replay(traces, "agent", scenario).run()["warm_by_gap"]["human"]
    with_hint = Replay(traces, "agent", scenario.model_copy(update={"user_active_s": 5.0})).run()
    assert with_hint["warm_by_gap"]["human"]["warm_resume_rate"] >= without["warm_resume_rate"] + 0.05


def test_an_engine_owning_hbm_changes_the_agent_not_lru_offload(traces_dir: Path) -> None:
    traces = shared(traces_dir, "0001", "0006", "0010", "0277")
    ours, engine = Scenario(sessions=4), Scenario(sessions=4, hbm_owner="engine")
    base = Replay(traces, "lru-offload", ours).run()
    assert Replay(traces, "lru-offload", engine).run()["warm_resume_rate"] == base["warm_resume_rate"]
    agent_engine = Replay(traces, "agent", engine).run()
    assert base["warm_resume_rate"] <= agent_engine["warm_resume_rate"]
    assert agent_engine["warm_resume_rate"] < Replay(traces, "agent", ours).run()["warm_resume_rate"]
    assert agent_engine["prefetch_precision"] is not None  # it still warms sessions into HBM


def test_cli_writes_json_markdown_and_plots_and_skips_hint_policies_on_mooncake(
    tmp_path: Path, traces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    code = kvstore_main(
        [
            "bench",
            "replay",
            "--traces",
            str(traces_dir / "agentic" / "trace_0007.json"),
            str(traces_dir / "agentic" / "trace_0404.json"),
            "--policies",
            "lru-offload,agent,oracle",
            "--robustness",
            "--sigma-sweep",
            "0,1",
            "--hbm-sweep",
            "32GiB,64GiB",
            "--sessions-sweep",
            "1,2",
            "--jobs",
            "2",
            "--json",
            str(out),
            "--markdown",
            str(md),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert set(doc["scenario_results"]) == {"default", "busy"}
    assert set(doc["results"]) == {
        "lru-offload",
        "agent",
        "oracle",
        "agent+active",
        "agent (no hints)",
        "agent (sigma 2)",
    }
    assert set(doc["scenario_results"]["busy"]) == {"lru-offload", "agent", "oracle", "agent+active"}
    assert doc["scenarios"]["busy"]["sessions"] == 16 and doc["scenario"]["sessions"] == 8
    agent = doc["results"]["agent"]
    assert {
        "warm_resume_rate",
        "cache_stall_mean",
        "cache_stall_p99",
        "room_wait_p99",
        "warm_by_gap",
        "oversize_requests",
        "prefill_amplification",
        "bytes_moved_per_reused_byte",
    } <= set(agent)
    assert set(agent["per_trace"]) == {
        str(traces_dir / "agentic" / f) for f in ("trace_0007.json", "trace_0404.json")
    }
    assert set(doc["sigma_sweep"]) == {"0.0", "1.0"} and set(doc["hbm_sweep"]["agent"]) == {
        "32.0GiB",
        "64.0GiB",
    }
    assert set(doc["sessions_sweep"]["oracle"]) == {"1", "2"}
    assert doc["sustained_sessions"]["agent"]["sessions"] in (0, 1, 2)
    assert doc["scenario"]["hbm"] == "40.0GiB" and doc["scenario"]["sigma"] == 0.5
    text = md.read_text()
    assert "per trace, default scenario" in text and "| trace_0007.json |" in text
    assert "below lru-offload's on" in text
    assert "replay, busy scenario" in capsys.readouterr().out
    for plot in ("resume_ttft_cdf.png", "warm_resume_vs_hbm.png", "sessions_sweep.png"):
        assert (tmp_path / "plots" / plot).stat().st_size > 1000
    sample = tmp_path / "conversation.jsonl"
    lines = (traces_dir / "mooncake" / "conversation_trace.jsonl").read_text().splitlines()[:60]
    sample.write_text("\n".join(lines) + "\n")
    code = kvstore_main(
        [
            "bench",
            "replay",
            "--traces",
            str(sample),
            "--policies",
            "lru,lru-offload,agent",
            "--scenarios",
            "default",
            "--jobs",
            "1",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"lru", "lru-offload"}
    assert "agent" in doc["notes"][0]


def test_cli_rejects_bad_input_with_a_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kvstore_main(["bench", "replay", "--traces", str(tmp_path / "none.json")]) == 2
    assert "no such trace file" in capsys.readouterr().err
    trace = three_requests(tmp_path)
    assert kvstore_main(["bench", "replay", "--traces", str(trace), "--policies", "lru,fifo"]) == 2
    assert "unknown policies" in capsys.readouterr().err
    assert kvstore_main(["bench", "replay", "--traces", str(trace), "--hbm", "lots"]) == 2
    assert "hbm" in capsys.readouterr().err
    assert kvstore_main(["bench", "replay", "--traces", str(trace), "--scenarios", "default,weekend"]) == 2
    assert "unknown scenarios" in capsys.readouterr().err
    assert kvstore_main(["bench", "replay", "--traces", str(trace), "--sessions-sweep", "0,8"]) == 2
    assert "--sessions-sweep" in capsys.readouterr().err
    assert kvstore_main(["bench", "replay", "--traces", str(trace), "--jobs", "0"]) == 2
    assert "--jobs" in capsys.readouterr().err
