"""Checks on the replay simulator itself: invariants at every virtual instant, figures computed
by hand for a hand-made trace, and the relations between policies that must hold."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvstore.bench.replay import Replay, ScenarioError
from kvstore.bench.scenario import Scenario
from kvstore.bench.traces import TraceError, read_trace
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


def test_oracle_is_never_worse_than_agent_on_the_shared_traces(traces_dir: Path) -> None:
    paths = sorted((traces_dir / "agentic").glob("*.json"))
    traces = [read_trace(p) for p in paths]
    oracle = Replay(traces, "oracle", Scenario()).run()
    agent = Replay(traces, "agent", Scenario()).run()
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


def test_hbm_smaller_than_a_request_is_a_clear_error(tmp_path: Path) -> None:
    trace = read_trace(three_requests(tmp_path))
    with pytest.raises(ScenarioError, match="raise --hbm"):
        Replay([trace], "lru", Scenario(hbm=ByteSize_of(BLOCK_BYTES))).run()


def test_cli_writes_json_and_plots_and_skips_hint_policies_on_mooncake(
    tmp_path: Path, traces_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r.json"
    code = kvstore_main(
        [
            "bench",
            "replay",
            "--traces",
            str(traces_dir / "agentic" / "trace_0007.json"),
            "--policies",
            "lru-offload,agent",
            "--sigma-sweep",
            "0,1",
            "--hbm-sweep",
            "32GiB,64GiB",
            "--jobs",
            "2",
            "--json",
            str(out),
            "--plots",
            str(tmp_path / "plots"),
        ]
    )
    assert code == 0
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"lru-offload", "agent"}
    assert {
        "warm_resume_rate",
        "prefill_amplification",
        "resume_ttft_p50",
        "resume_ttft_p99",
        "bytes_moved_per_reused_byte",
        "prefetch_precision",
        "prefetch_late_rate",
        "hbm_idle_gib_s",
    } <= set(doc["results"]["agent"])
    assert set(doc["sigma_sweep"]) == {"0.0", "1.0"} and set(doc["hbm_sweep"]["agent"]) == {
        "32.0GiB",
        "64.0GiB",
    }
    assert doc["scenario"]["hbm"] == "40.0GiB" and doc["scenario"]["sigma"] == 0.5
    assert (tmp_path / "plots" / "resume_ttft_cdf.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "warm_resume_vs_hbm.png").stat().st_size > 1000
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
