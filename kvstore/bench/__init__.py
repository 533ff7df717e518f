"""Benchmarks: `kvstore bench replay | route | index | grpc | hints | dataplane | proxy | stall | vllm |
crash | remote | redis-scale | soak | faults`.

They print figures for notes; none of them is a timed test."""

from __future__ import annotations

import argparse


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    from kvstore.bench import (
        crash_bench,
        dataplane_bench,
        faults_bench,
        grpc_bench,
        hints_bench,
        index_bench,
        proxy_bench,
        redis_scale,
        remote_bench,
        replay_cli,
        route_cli,
        soak_bench,
        stall_bench,
        vllm_bench,
    )

    bench = sub.add_parser("bench", help="run a benchmark", description="Benchmarks that print figures.")
    kinds = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    replay_cli.add_parser(kinds)
    route_cli.add_parser(kinds)
    index_bench.add_parser(kinds)
    grpc_bench.add_parser(kinds)
    hints_bench.add_parser(kinds)
    dataplane_bench.add_parser(kinds)
    proxy_bench.add_parser(kinds)
    stall_bench.add_parser(kinds)
    vllm_bench.add_parser(kinds)
    crash_bench.add_parser(kinds)
    remote_bench.add_parser(kinds)
    redis_scale.add_parser(kinds)
    soak_bench.add_parser(kinds)
    faults_bench.add_parser(kinds)
