"""`kvstore bench replay`: every policy over the same traces and scenario, side by side.

Runs go to worker processes (one per core by default); each rebuilds the store for its policy and
replays on a virtual clock. Prints the scenario and a table, writes every figure as JSON and, on
request, PNG plots: the resume-TTFT CDF per policy and the warm-resume rate against HBM size.
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
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kvstore.bench.replay import NEEDS_HINTS, POLICIES, Replay, ScenarioError
from kvstore.bench.scenario import PROFILES, Scenario
from kvstore.bench.traces import Trace, TraceError, expand, read_trace

COLUMNS = [
    "warm_resume_rate",
    "prefill_amplification",
    "resume_ttft_p50",
    "resume_ttft_p99",
    "first_ttft_p50",
    "bytes_moved_per_reused_byte",
    "prefetch_precision",
    "prefetch_late_rate",
    "hbm_idle_gib_s",
]

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


def _table(title: str, results: dict[str, dict[str, Any]], columns: list[str]) -> Table:
    table = Table(title=title)
    table.add_column("policy")
    for col in columns:
        table.add_column(col.replace("_", " "), justify="right")
    for policy, figures in results.items():
        table.add_row(policy, *(_fmt(figures.get(c)) for c in columns))
    return table


def _plots(out: Path, samples: dict[str, list[float]], hbm_sweep: dict[str, dict[str, float]]) -> list[Path]:
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
    if hbm_sweep:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for policy, points in hbm_sweep.items():
            xs = sorted(points, key=lambda k: int(TypeAdapter(ByteSize).validate_python(k)))
            ax.plot(
                [int(TypeAdapter(ByteSize).validate_python(x)) / 2**30 for x in xs],
                [points[x] for x in xs],
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
    return written


def _save(plt: Any, fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Label, grid and legend a plot, write it as a PNG and close it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
        hbm_sizes = (
            [str(TypeAdapter(ByteSize).validate_python(h)) for h in args.hbm_sweep.split(",")]
            if args.hbm_sweep
            else []
        )
        sigmas = [float(x) for x in args.sigma_sweep.split(",")] if args.sigma_sweep else []
    except (TraceError, ValidationError, ValueError) as exc:
        print(f"kvstore bench replay: {exc}", file=sys.stderr)
        return 2
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
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
    base = scenario.model_dump()
    jobs = [(f"main:{p}", p, base) for p in policies]
    if "agent" in policies:
        jobs += [(f"sigma:{s}", "agent", {**base, "sigma": s}) for s in sigmas]
    jobs += [(f"hbm:{h}:{p}", p, {**base, "hbm": h}) for h in hbm_sizes for p in policies]
    total = sum(len(s.requests) for t in traces for s in _all_sessions(t))
    console.print(f"[bold]scenario[/bold] {json.dumps(scenario.describe())}")
    console.print(
        f"[bold]traces[/bold] {len(traces)} files, {total} requests; {len(jobs)} runs on {args.jobs} cores"
    )
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    results: dict[str, tuple[dict[str, Any], list[float]]] = {}
    manager = multiprocessing.Manager()
    queue = manager.Queue()
    try:
        with (
            Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                console=console,
                transient=not sys.stdout.isatty(),
            ) as progress,
            ProcessPoolExecutor(
                args.jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=([str(p) for p in paths], queue),
            ) as pool,
        ):
            bars = {job_id: progress.add_task(job_id, total=total) for job_id, _, _ in jobs}
            futures = [pool.submit(_run, job) for job in jobs]
            while not all(f.done() for f in futures):
                _drain(queue, progress, bars, timeout=0.2)
            _drain(queue, progress, bars, timeout=0)
            for f in futures:
                job_id, figures, samples = f.result()
                results[job_id] = (figures, samples)
    except ScenarioError as exc:
        print(f"kvstore bench replay: {exc}", file=sys.stderr)
        return 2
    finally:
        manager.shutdown()
    main_results = {p: results[f"main:{p}"][0] for p in policies}
    console.print(
        _table(
            "replay: "
            + ", ".join(Path(t.path).name for t in traces[:4])
            + (" ..." if len(traces) > 4 else ""),
            main_results,
            COLUMNS,
        )
    )
    speed = {
        p: {
            k: f[k]
            for k in ("requests", "replay_wall_s", "requests_per_s", "block_ops_per_s", "hbm_wait_s_total")
        }
        for p, f in main_results.items()
    }
    console.print(
        _table(
            "replay speed (per policy, one core each)",
            speed,
            ["requests", "replay_wall_s", "requests_per_s", "block_ops_per_s", "hbm_wait_s_total"],
        )
    )
    sigma_sweep = {str(s): results[f"sigma:{s}"][0] for s in sigmas if f"sigma:{s}" in results}
    if sigma_sweep:
        console.print(
            _table("agent: hint noise sweep (sigma)", sigma_sweep, [*COLUMNS[:4], "prefetch_late_rate"])
        )
    hbm_sweep: dict[str, dict[str, float]] = {}
    for h in hbm_sizes:
        for p in policies:
            hbm_sweep.setdefault(p, {})[ByteSize(int(h)).human_readable(decimal=False)] = results[
                f"hbm:{h}:{p}"
            ][0]["warm_resume_rate"]
    if hbm_sweep:
        table = Table(title="warm resume rate against HBM capacity")
        table.add_column("policy")
        sizes = list(next(iter(hbm_sweep.values())))
        for size in sizes:
            table.add_column(size, justify="right")
        for p, points in hbm_sweep.items():
            table.add_row(p, *(_fmt(points[s]) for s in sizes))
        console.print(table)
    payload = {
        "scenario": scenario.describe(),
        "traces": [str(p) for p in paths],
        "notes": notes,
        "results": main_results,
        "sigma_sweep": sigma_sweep,
        "hbm_sweep": hbm_sweep,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2))
        console.print(f"wrote {args.json}")
    if args.plots:
        for path in _plots(args.plots, {p: results[f"main:{p}"][1] for p in policies}, hbm_sweep):
            console.print(f"wrote {path}")
    return 0


def _all_sessions(trace: Trace) -> list:
    out, stack = [], list(trace.sessions)
    while stack:
        s = stack.pop()
        out.append(s)
        stack += [sub for _, _, sub in s.subagents]
    return out


def _drain(queue: Any, progress: Progress, bars: dict[str, Any], timeout: float) -> None:
    import queue as queue_mod

    try:
        while True:
            job_id, n = queue.get(timeout=timeout) if timeout else queue.get_nowait()
            progress.advance(bars[job_id], n)
            timeout = 0
    except queue_mod.Empty:
        return


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay",
        help="replay agent traces through every policy on a virtual clock",
        description="Replay traces (agentic .json sessions, Mooncake .jsonl) through the store's policies "
        "side by side on a virtual clock, in the DESIGN §5 scenario unless told otherwise.",
    )
    d = Scenario()
    p.add_argument("--traces", nargs="+", type=Path, required=True, help="trace files or folders")
    p.add_argument(
        "--policies", default=",".join(POLICIES), help=f"comma-separated (default {','.join(POLICIES)})"
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
    p.add_argument("--sigma-sweep", default="", help="also run agent at these sigmas, e.g. 0,0.25,0.5,1.0")
    p.add_argument(
        "--hbm-sweep", default="", help="also run every policy at these HBM sizes, e.g. 32GiB,64GiB"
    )
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--plots", type=Path, help="write PNG plots into this folder")
    p.set_defaults(run=main)
