"""`kvstore bench replay`: every policy over the same traces, in the scenarios DESIGN §5 names,
side by side.

Runs go to worker processes (one per core by default); each rebuilds the store for its policy and
replays on a virtual clock. Prints the scenario, a table per scenario (default; `busy`: 16
sessions; `engine`: HBM evicted by the engine's own LRU), warm resumes split by what preceded
them, a per-trace table against lru-offload, and optional sweeps (hint noise, HBM size, concurrent
sessions); writes every figure as JSON, the tables as Markdown, and PNG plots on request.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import ByteSize, TypeAdapter, ValidationError
from rich.console import Console
from rich.table import Table

from kvstore.bench.progress import Progress
from kvstore.bench.replay import GAP_KINDS, NEEDS_HINTS, POLICIES, Replay, ScenarioError
from kvstore.bench.scenario import PROFILES, Scenario
from kvstore.bench.traces import Trace, TraceError, expand, read_trace

COLUMNS = [
    "warm_resume_rate",
    "cache_stall_mean",
    "cache_stall_p99",
    "room_wait_p99",
    "resume_ttft_p50",
    "resume_ttft_p99",
    "prefill_amplification",
    "bytes_moved_per_reused_byte",
    "prefetch_precision",
    "prefetch_late_rate",
]
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "busy": {"sessions": 16},
    "engine": {"hbm_owner": "engine"},
}
ACTIVE = "agent+active"  # the agent policy with the UserActive hint simulated
NO_HINTS, NOISY = "agent (no hints)", "agent (sigma 2)"
BASELINE = "lru-offload"
STALL_BUDGET_S = 0.5  # the sessions sweep reports how many sessions keep cache_stall_p99 under this

_traces: list[Trace] = []
_progress: Any = None


def _init_worker(paths: list[str], progress: Any) -> None:
    global _traces, _progress
    _traces = [read_trace(Path(p)) for p in paths]
    _progress = progress


def _run(job: tuple[str, str, dict[str, Any]]) -> tuple[str, dict[str, Any], list[float]]:
    """One policy under one scenario, in a worker: (job id, figures, resume TTFT samples)."""
    job_id, policy, scenario = job
    replay = Replay(_traces, policy, Scenario(**scenario), progress=lambda n: _progress.put((job_id, n)))
    figures = replay.run()
    return job_id, figures, replay.tally.resume_ttft


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


class Report:
    """Tables printed to the terminal and kept as Markdown."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.markdown: list[str] = []

    def table(self, title: str, header: list[str], rows: list[list[Any]]) -> None:
        table = Table(title=title)
        for i, col in enumerate(header):
            table.add_column(col.replace("_", " "), justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*(_fmt(v) for v in row))
        self.console.print(table)
        self.markdown += [f"### {title}", "", "| " + " | ".join(header) + " |"]
        self.markdown.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
        self.markdown += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
        self.markdown.append("")

    def line(self, text: str) -> None:
        self.console.print(text)
        self.markdown += [text, ""]


def _plots(
    out: Path, samples: dict[str, list[float]], sweeps: dict[str, dict[str, dict[str, Any]]]
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy, values in samples.items():
        if values:
            ordered = sorted(values)
            ax.step(
                ordered, [(i + 1) / len(ordered) for i in range(len(ordered))], where="post", label=policy
            )
    ax.set_xscale("log")
    written.append(
        _save(
            plt,
            fig,
            ax,
            "resume TTFT (s, log scale)",
            "fraction of resumed requests",
            "Resume TTFT CDF",
            out / "resume_ttft_cdf.png",
        )
    )
    if sweeps.get("hbm"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for policy, points in sweeps["hbm"].items():
            xs = sorted(points, key=lambda k: int(TypeAdapter(ByteSize).validate_python(k)))
            ax.plot(
                [int(TypeAdapter(ByteSize).validate_python(x)) / 2**30 for x in xs],
                [points[x]["warm_resume_rate"] for x in xs],
                marker="o",
                label=policy,
            )
        written.append(
            _save(
                plt,
                fig,
                ax,
                "HBM for the KV cache (GiB)",
                "warm resume rate",
                "Warm-resume rate against HBM capacity",
                out / "warm_resume_vs_hbm.png",
            )
        )
    if sweeps.get("sessions"):
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
        for policy, points in sweeps["sessions"].items():
            xs = sorted(points, key=int)
            left.plot(
                [int(x) for x in xs], [points[x]["cache_stall_p99"] for x in xs], marker="o", label=policy
            )
            right.plot(
                [int(x) for x in xs], [points[x]["warm_resume_rate"] for x in xs], marker="o", label=policy
            )
        left.axhline(STALL_BUDGET_S, color="grey", linestyle="--", linewidth=1)
        _label(left, "concurrent sessions", "cache stall p99 (s)", "Cache stall p99")
        written.append(
            _save(
                plt,
                fig,
                right,
                "concurrent sessions",
                "warm resume rate",
                "Warm resumes",
                out / "sessions_sweep.png",
            )
        )
    return written


def _label(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()


def _save(plt: Any, fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Label, grid and legend a plot, write it as a PNG and close it."""
    _label(ax, xlabel, ylabel, title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _jobs(
    args: argparse.Namespace,
    base: dict[str, Any],
    policies: list[str],
    scenarios: list[str],
    sweeps: dict[str, list[Any]],
) -> list[tuple[str, str, dict[str, Any]]]:
    jobs = []
    agent = "agent" in policies
    for name in scenarios:
        scenario = {**base, **SCENARIOS[name]}
        jobs += [(f"{name}:{p}", p, scenario) for p in policies]
        if agent and args.user_active > 0:
            jobs.append((f"{name}:{ACTIVE}", "agent", {**scenario, "user_active_s": args.user_active}))
    if agent and args.robustness:
        jobs += [
            (f"default:{NO_HINTS}", "agent", {**base, "hints": False}),
            (f"default:{NOISY}", "agent", {**base, "sigma": 2.0}),
        ]
        if BASELINE not in policies:
            jobs.append((f"default:{BASELINE}", BASELINE, base))
    if agent:
        jobs += [(f"sigma:{s}", "agent", {**base, "sigma": s}) for s in sweeps["sigma"]]
    jobs += [(f"hbm:{h}:{p}", p, {**base, "hbm": h}) for h in sweeps["hbm"] for p in policies]
    jobs += [(f"sessions:{n}:{p}", p, {**base, "sessions": n}) for n in sweeps["sessions"] for p in policies]
    return jobs


def run_all(
    jobs: list[tuple[str, str, dict[str, Any]]], paths: list[Path], total: int, cores: int, console: Console
) -> dict[str, tuple[dict[str, Any], list[float]]]:
    results: dict[str, tuple[dict[str, Any], list[float]]] = {}
    manager = multiprocessing.Manager()
    queue = manager.Queue()
    try:
        with (
            Progress(f"replay, {len(jobs)} runs", total=total * len(jobs), unit="requests") as progress,
            ProcessPoolExecutor(
                cores,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=([str(p) for p in paths], queue),
            ) as pool,
        ):
            futures = [pool.submit(_run, job) for job in jobs]
            while not all(f.done() for f in futures):
                _drain(queue, progress, timeout=0.2)
            _drain(queue, progress, timeout=0)
            for f in futures:
                job_id, figures, samples = f.result()
                results[job_id] = (figures, samples)
    finally:
        manager.shutdown()
    return results


def _report(
    report: Report,
    results: dict[str, tuple[dict[str, Any], list[float]]],
    scenarios: list[str],
    rows: list[str],
    descs: dict[str, Any],
    trace_names: str,
) -> dict[str, dict[str, Any]]:
    by_scenario: dict[str, dict[str, Any]] = {}
    for name in scenarios:
        figures = {r: results[f"{name}:{r}"][0] for r in rows if f"{name}:{r}" in results}
        if name == "default":
            figures |= {r: results[f"default:{r}"][0] for r in (NO_HINTS, NOISY) if f"default:{r}" in results}
            if BASELINE not in figures and f"default:{BASELINE}" in results:
                figures[BASELINE] = results[f"default:{BASELINE}"][0]
        by_scenario[name] = figures
        title = f"replay, {name} scenario ({descs[name]}): {trace_names}"
        report.table(
            title, ["policy", *COLUMNS], [[r, *(f.get(c) for c in COLUMNS)] for r, f in figures.items()]
        )
        if "oracle" in figures and BASELINE in figures and "agent" in figures:
            lo, hi, got = (figures[p]["warm_resume_rate"] for p in (BASELINE, "oracle", "agent"))
            if lo is not None and hi is not None and got is not None and hi > lo:
                report.line(
                    f"{name}: agent closes {(got - lo) / (hi - lo):.0%} of the warm-resume gap from "
                    f"{BASELINE} ({lo:.3f}) to oracle ({hi:.3f})"
                )
    default = by_scenario.get("default") or next(iter(by_scenario.values()))
    report.table(
        "warm resume rate by what preceded the resume (default scenario)",
        ["policy", *(f"after {k} (n)" for k in GAP_KINDS)],
        [[r, *(_split(f, k) for k in GAP_KINDS)] for r, f in default.items()],
    )
    oversize = next(iter(default.values()))["oversize_requests"]
    if oversize:
        report.line(
            f"{oversize} requests' KV alone exceeds HBM: prefilled whole, not cached, and not "
            "counted as resumes (oversize_requests)"
        )
    if BASELINE in default and "agent" in default:
        _per_trace(report, default["agent"], default[BASELINE])
    return by_scenario


def _split(figures: dict[str, Any], kind: str) -> str:
    split = figures["warm_by_gap"].get(kind)
    return "n/a" if split is None else f"{split['warm_resume_rate']:.3f} ({split['resumed']})"


def _per_trace(report: Report, agent: dict[str, Any], base: dict[str, Any]) -> None:
    rows, worse = [], 0
    for trace, ours in agent["per_trace"].items():
        theirs = base["per_trace"][trace]
        if not ours["resumed_requests"]:
            continue
        behind = ours["warm_resume_rate"] < theirs["warm_resume_rate"]
        worse += behind
        rows.append(
            [
                Path(trace).name,
                ours["resumed_requests"],
                theirs["warm_resume_rate"],
                ours["warm_resume_rate"],
                ours["warm_resume_rate"] - theirs["warm_resume_rate"],
                _ms(theirs["cache_stall_mean"]),
                _ms(ours["cache_stall_mean"]),
                "behind" if behind else "",
            ]
        )
    report.table(
        f"per trace, default scenario: agent against {BASELINE} (cache stall in ms)",
        [
            "trace",
            "resumes",
            f"{BASELINE} warm",
            "agent warm",
            "difference",
            f"{BASELINE} stall",
            "agent stall",
            "",
        ],
        rows,
    )
    report.line(f"agent's warm resume rate is below {BASELINE}'s on {worse} of {len(rows)} traces")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _sweeps(
    report: Report,
    results: dict[str, tuple[dict[str, Any], list[float]]],
    policies: list[str],
    sweeps: dict[str, list[Any]],
) -> dict[str, dict[str, dict[str, Any]]]:
    keep = (
        "warm_resume_rate",
        "cache_stall_mean",
        "cache_stall_p99",
        "prefetch_late_rate",
        "prefetch_precision",
    )
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if sweeps["sigma"]:
        sigma = {str(s): {k: results[f"sigma:{s}"][0][k] for k in keep} for s in sweeps["sigma"]}
        out["sigma"] = sigma
        report.table(
            "agent: hint noise sweep (sigma)", ["sigma", *keep], [[s, *f.values()] for s, f in sigma.items()]
        )
    if sweeps["hbm"]:
        hbm = {
            p: {
                ByteSize(int(h)).human_readable(decimal=False): {
                    k: results[f"hbm:{h}:{p}"][0][k] for k in keep
                }
                for h in sweeps["hbm"]
            }
            for p in policies
        }
        out["hbm"] = hbm
        sizes = list(next(iter(hbm.values())))
        report.table(
            "warm resume rate against HBM capacity",
            ["policy", *sizes],
            [[p, *(points[s]["warm_resume_rate"] for s in sizes)] for p, points in hbm.items()],
        )
    if sweeps["sessions"]:
        sessions = {
            p: {str(n): {k: results[f"sessions:{n}:{p}"][0][k] for k in keep} for n in sweeps["sessions"]}
            for p in policies
        }
        out["sessions"] = sessions
        counts = [str(n) for n in sweeps["sessions"]]
        report.table(
            "cache stall p99 (s) against concurrent sessions",
            ["policy", *counts],
            [[p, *(points[n]["cache_stall_p99"] for n in counts)] for p, points in sessions.items()],
        )
        report.table(
            "warm resume rate against concurrent sessions",
            ["policy", *counts],
            [[p, *(points[n]["warm_resume_rate"] for n in counts)] for p, points in sessions.items()],
        )
        sustained = {
            p: max(
                (int(n) for n in counts if (points[n]["cache_stall_p99"] or 0) <= STALL_BUDGET_S), default=0
            )
            for p, points in sessions.items()
        }
        out["sustained_sessions"] = {p: {"sessions": n} for p, n in sustained.items()}
        report.table(
            f"most concurrent sessions with cache_stall_p99 <= {STALL_BUDGET_S} s",
            ["policy", "sessions"],
            [[p, n] for p, n in sustained.items()],
        )
    return out


def main(args: argparse.Namespace) -> int:
    console = Console()
    try:
        paths = expand(args.traces)
        traces = [read_trace(p) for p in paths]
        scenario = Scenario(
            model=args.model,
            hbm=args.hbm,
            dram=args.dram,
            disk=args.disk,
            hbm_dram_gbps=args.hbm_dram_gbps,
            disk_read_gbps=args.disk_read_gbps,
            disk_write_gbps=args.disk_write_gbps,
            prefill_tps=args.prefill_tps,
            sessions=args.sessions,
            stagger_s=args.stagger,
            sigma=args.sigma,
            seed=args.seed,
            ttl_s=args.ttl,
        )
        sweeps = {
            "hbm": [str(TypeAdapter(ByteSize).validate_python(h)) for h in comma_list(args.hbm_sweep)],
            "sigma": [float(x) for x in comma_list(args.sigma_sweep)],
            "sessions": [int(x) for x in comma_list(args.sessions_sweep)],
        }
        if any(not 1 <= n <= 10_000 for n in sweeps["sessions"]) or any(s < 0 for s in sweeps["sigma"]):
            raise ValueError("--sessions-sweep takes counts from 1 to 10000, --sigma-sweep values >= 0")
        scenarios = comma_list(args.scenarios)
        unknown = [s for s in scenarios if s not in SCENARIOS]
        if unknown or not scenarios:
            raise ValueError(f"unknown scenarios {unknown}; choose from {', '.join(SCENARIOS)}")
        if args.user_active < 0:
            raise ValueError("--user-active must be >= 0 seconds")
        if args.jobs < 1:
            raise ValueError("--jobs must be >= 1")
    except (TraceError, ValidationError, ValueError) as exc:
        print(f"kvstore bench replay: {exc}", file=sys.stderr)
        return 2
    policies = comma_list(args.policies)
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        print(
            f"kvstore bench replay: unknown policies {unknown}; choose from {', '.join(POLICIES)}",
            file=sys.stderr,
        )
        return 2
    notes = []
    if not all(t.has_hints for t in traces):
        skipped = [p for p in policies if p in NEEDS_HINTS]
        policies = [p for p in policies if p not in NEEDS_HINTS]
        if skipped:
            notes.append(
                f"{', '.join(skipped)} not run: these traces have no sessions or tool structure to derive "
                "hints from (only policies that need no hints apply)"
            )
        if not policies:
            print("kvstore bench replay: no chosen policy applies to these traces", file=sys.stderr)
            return 2
    base = scenario.model_dump()
    jobs = _jobs(args, base, policies, scenarios, sweeps)
    total = sum(len(s.requests) for t in traces for s in all_sessions(t))
    console.print(f"[bold]scenario[/bold] {json.dumps(scenario.describe())}")
    console.print(
        f"[bold]traces[/bold] {len(traces)} files, {total} requests; {len(jobs)} runs on {args.jobs} cores"
    )
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    try:
        results = run_all(jobs, paths, total, args.jobs, console)
    except ScenarioError as exc:
        print(f"kvstore bench replay: {exc}", file=sys.stderr)
        return 2
    report = Report(console)
    rows = [*policies, *([ACTIVE] if "agent" in policies and args.user_active > 0 else [])]
    descs = {
        name: ", ".join(f"{k}={v}" for k, v in SCENARIOS[name].items()) or "as above" for name in scenarios
    }
    names = ", ".join(Path(t.path).name for t in traces[:4]) + (
        f" ... ({len(traces)} traces)" if len(traces) > 4 else ""
    )
    by_scenario = _report(report, results, scenarios, rows, descs, names)
    first = scenarios[0]
    speed = ["requests", "replay_wall_s", "requests_per_s", "block_ops_per_s"]
    report.table(
        "replay speed (per policy, one core each)",
        ["run", *speed],
        [[f"{name}:{p}", *(by_scenario[name][p][k] for k in speed)] for name in scenarios for p in policies],
    )
    sweep_figures = _sweeps(report, results, policies, sweeps)
    payload = {
        "scenario": scenario.describe(),
        "scenarios": {name: Scenario(**{**base, **SCENARIOS[name]}).describe() for name in scenarios},
        "traces": [str(p) for p in paths],
        "notes": notes,
        "results": by_scenario[first],
        "scenario_results": by_scenario,
        "sigma_sweep": sweep_figures.get("sigma", {}),
        "hbm_sweep": sweep_figures.get("hbm", {}),
        "sessions_sweep": sweep_figures.get("sessions", {}),
        "sustained_sessions": sweep_figures.get("sustained_sessions", {}),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {args.json}")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(report.markdown))
        console.print(f"wrote {args.markdown}")
    if args.plots:
        samples = {r: results[f"{first}:{r}"][1] for r in rows if f"{first}:{r}" in results}
        for path in _plots(args.plots, samples, sweep_figures):
            console.print(f"wrote {path}")
    return 0


def comma_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def all_sessions(trace: Trace) -> list:
    out, stack = [], list(trace.sessions)
    while stack:
        s = stack.pop()
        out.append(s)
        stack += [sub for _, _, sub in s.subagents]
    return out


def _drain(queue: Any, progress: Progress, timeout: float) -> None:
    import queue as queue_mod

    try:
        while True:
            _, n = queue.get(timeout=timeout) if timeout else queue.get_nowait()
            progress.advance(n)
            timeout = 0
    except queue_mod.Empty:
        return


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="replay agent traces through every policy on a virtual clock",
        description="Replay traces (agentic .json sessions, Mooncake .jsonl) through the store's policies "
        "side by side on a virtual clock, in the DESIGN §5 scenarios unless told otherwise.",
    )
    d = Scenario()
    p.add_argument("--traces", nargs="+", type=Path, required=True, help="trace files or folders")
    p.add_argument(
        "--policies", default=",".join(POLICIES), help=f"comma-separated (default {','.join(POLICIES)})"
    )
    p.add_argument(
        "--scenarios",
        default="default,busy",
        help=f"comma-separated, from {', '.join(SCENARIOS)} (busy: 16 sessions; engine: HBM evicted by the "
        "engine's LRU whatever the policy); default: default,busy",
    )
    p.add_argument("--model", default=d.model, choices=sorted(PROFILES), help="KV bytes per token profile")
    p.add_argument("--hbm", default="40GiB", help="HBM for the KV cache (default 40GiB)")
    p.add_argument("--dram", default="256GiB", help="DRAM tier (default 256GiB)")
    p.add_argument("--disk", default="2TiB", help="disk tier (default 2TiB)")
    p.add_argument("--hbm-dram-gbps", type=float, default=d.hbm_dram_gbps, help="GB/s each way (default 50)")
    p.add_argument("--disk-read-gbps", type=float, default=d.disk_read_gbps, help="default 6")
    p.add_argument("--disk-write-gbps", type=float, default=d.disk_write_gbps, help="default 3")
    p.add_argument(
        "--prefill-tps", type=float, default=d.prefill_tps, help="prefill tokens/s (default 25000)"
    )
    p.add_argument(
        "--sessions", type=int, default=d.sessions, help="concurrent closed-loop slots (default 8)"
    )
    p.add_argument(
        "--stagger", type=float, default=d.stagger_s, help="seconds between slot starts (default 10)"
    )
    p.add_argument("--sigma", type=float, default=d.sigma, help="hint noise, lognormal sigma (default 0.5)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--ttl", type=float, default=d.ttl_s, help="the ttl baseline's TTL in seconds (default 10)"
    )
    p.add_argument(
        "--user-active",
        type=float,
        default=5.0,
        help="also run agent with UserActive sent about this many seconds before each person's request "
        "(x lognormal(0, 0.5)); 0: do not (default 5)",
    )
    p.add_argument(
        "--robustness", action="store_true", help="also run agent with no hints at all, and with sigma 2.0"
    )
    p.add_argument("--sigma-sweep", default="", help="also run agent at these sigmas, e.g. 0,0.25,0.5,1.0")
    p.add_argument(
        "--hbm-sweep", default="", help="also run every policy at these HBM sizes, e.g. 32GiB,64GiB"
    )
    p.add_argument(
        "--sessions-sweep", default="", help="also run every policy at these session counts, e.g. 4,8,16"
    )
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--markdown", type=Path, help="write the tables here, as Markdown")
    p.add_argument("--plots", type=Path, help="write PNG plots into this folder")
    p.set_defaults(run=main)
