"""`kvstore bench route`: the replay with N workers, one global index and each router side by side.

Every run is the replay (kvstore.bench.replay) with `workers` stores on one virtual clock and the
router choosing each request's worker; runs go to worker processes as in `kvstore bench replay`.
Prints and writes, per router (and per router with the shared remote tier, when one is given):
prefill amplification, cache stall, load imbalance, overall and per trace (docs/benchmarks.md
defines them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console

from kvstore.bench.replay import POLICIES, ScenarioError
from kvstore.bench.replay_cli import Report, all_sessions, comma_list, run_all
from kvstore.bench.route import ROUTERS
from kvstore.bench.scenario import Scenario
from kvstore.bench.traces import TraceError, expand, read_trace

COLUMNS = [
    "prefill_amplification",
    "prefill_amplification_fitting",
    "cache_stall_mean",
    "cache_stall_p99",
    "load_imbalance",
    "warm_resume_rate",
    "room_wait_p99",
    "resume_ttft_p50",
    "resume_ttft_p99",
    "remote_read_gib",
    "index_changes_per_worker_s",
]
PER_TRACE = ["prefill_amplification", "cache_stall_mean", "load_imbalance"]
REMOTE_SUFFIX = " +remote"


def _jobs(routers: list[str], policy: str, base: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    jobs = [(r, policy, {**base, "router": r, "remote": 0}) for r in routers]
    if base["remote"]:
        jobs += [(r + REMOTE_SUFFIX, policy, {**base, "router": r}) for r in routers]
    return jobs


def _tables(report: Report, figures: dict[str, dict[str, Any]], title: str) -> None:
    report.table(title, ["router", *COLUMNS], [[r, *(f.get(c) for c in COLUMNS)] for r, f in figures.items()])
    runs = list(figures)
    traces = list(next(iter(figures.values()))["per_trace"])
    header = ["trace", "resumes", *(f"{r}: {_short(c)}" for c in PER_TRACE for r in runs)]
    rows = []
    for trace in traces:
        per = {r: figures[r]["per_trace"][trace] for r in runs}
        rows.append(
            [
                Path(trace).name,
                per[runs[0]]["resumed_requests"],
                *(per[r][c] for c in PER_TRACE for r in runs),
            ]
        )
    report.table("per trace", header, rows)


def _short(column: str) -> str:
    return {"prefill_amplification": "amp", "cache_stall_mean": "stall", "load_imbalance": "imbalance"}[
        column
    ]


def main(args: argparse.Namespace) -> int:
    console = Console()
    try:
        paths = expand(args.traces)
        traces = [read_trace(p) for p in paths]
        routers = comma_list(args.routers)
        unknown = [r for r in routers if r not in ROUTERS]
        if unknown or not routers:
            raise ValueError(f"unknown routers {unknown}; choose from {', '.join(ROUTERS)}")
        if args.policy not in POLICIES:
            raise ValueError(f"unknown policy {args.policy!r}; choose from {', '.join(POLICIES)}")
        if args.jobs < 1:
            raise ValueError("--jobs must be >= 1")
        scenario = Scenario(
            model=args.model,
            hbm=args.hbm,
            prefill_tps=args.prefill_tps,
            workers=args.workers,
            sessions=args.sessions or 8 * args.workers,
            stagger_s=args.stagger,
            seed=args.seed,
            remote=args.remote,
            remote_gbps=args.remote_gbps,
        )
    except (TraceError, ValidationError, ValueError) as exc:
        print(f"kvstore bench route: {exc}", file=sys.stderr)
        return 2
    base = scenario.model_dump()
    jobs = _jobs(routers, args.policy, base)
    total = sum(len(s.requests) for t in traces for s in all_sessions(t))
    console.print(f"[bold]scenario[/bold] {json.dumps(scenario.describe())}")
    console.print(
        f"[bold]traces[/bold] {len(traces)} files, {total} requests; {len(jobs)} runs on {args.jobs} cores"
    )
    try:
        results = run_all(jobs, paths, total, args.jobs, console)
    except ScenarioError as exc:
        print(f"kvstore bench route: {exc}", file=sys.stderr)
        return 2
    figures = {job_id: results[job_id][0] for job_id, _, _ in jobs}
    report = Report(console)
    names = f"{len(traces)} traces, {scenario.workers} workers, {scenario.sessions} sessions, {args.policy}"
    _tables(report, figures, f"routing: {names}")
    payload = {"scenario": scenario.describe(), "traces": [str(p) for p in paths], "results": figures}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(report.markdown))
        console.print(f"wrote {args.markdown}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "route",
        help="replay agent traces over N workers with each router (round-robin, cache-only, cost)",
        description="The replay with N workers on one virtual clock, one global index and a router per run: "
        "prefill amplification, cache stall and load imbalance per router, overall and per trace.",
    )
    d = Scenario()
    p.add_argument("--traces", nargs="+", type=Path, required=True, help="trace files or folders")
    p.add_argument("--workers", type=int, default=4, help="workers (default 4)")
    p.add_argument(
        "--routers", default=",".join(ROUTERS), help=f"comma-separated (default {','.join(ROUTERS)})"
    )
    p.add_argument("--policy", default="agent", help="every worker's placement policy (default agent)")
    p.add_argument(
        "--sessions", type=int, default=0, help="concurrent closed-loop slots (default 8 per worker)"
    )
    p.add_argument(
        "--stagger", type=float, default=d.stagger_s, help="seconds between slot starts (default 10)"
    )
    p.add_argument("--model", default=d.model, help="KV bytes per token profile (default llama-3-8b)")
    p.add_argument("--hbm", default="40GiB", help="HBM for the KV cache per worker (default 40GiB)")
    p.add_argument("--prefill-tps", type=float, default=d.prefill_tps, help="prefill tokens/s per worker")
    p.add_argument(
        "--remote",
        default="0",
        help="also run each router with a shared remote tier of this size, e.g. 512GiB (default: none)",
    )
    p.add_argument(
        "--remote-gbps", type=float, default=d.remote_gbps, help="remote tier -> HBM GB/s (default 12.5)"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--markdown", type=Path, help="write the tables here, as Markdown")
    p.set_defaults(run=main)
