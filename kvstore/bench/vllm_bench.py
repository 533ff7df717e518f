"""`kvstore bench vllm`: the vLLM connector's figures, on this machine's CPU (no GPU needed).

1. Copies: GB/s of the connector's saves (engine blocks -> kvstore DRAM over shared memory) and
   loads (kvstore -> engine blocks) on a paged KV cache of the CPU backend's layout, against a raw
   copy (one memcpy) of the same bytes, all in one run, on one torch thread (as vLLM's CPU worker).
   The cache is shaped like Llama-3-8B's (32 layers, 8 KV heads, head 128, bf16) in 16-token
   blocks: 2 MiB per kvstore block.
2. TTFT of a resumed request on a real vLLM engine (the tiny Llama of `vllm_engine.py`, CPU):
   a long prompt whose prefix is (a) in the engine's own prefix cache, (b) only in kvstore's DRAM
   (loaded by the connector), (c) nowhere (recomputed). TTFT is the time of a one-token request;
   each round uses a fresh prompt, and the ratios are taken within a round.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from kvstore.bench.report import print_table, write_json
from kvstore.server.process import ServerProcess

LLAMA8B = {"layers": 32, "kv_heads": 8, "head": 128, "block_tokens": 16}


def add_parser(kinds: argparse._SubParsersAction) -> None:
    p = kinds.add_parser(
        "vllm",
        help="vLLM connector: load/save GB/s against memcpy, resumed-request TTFT on a real CPU engine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--blocks", type=int, default=64, help="blocks per load/save call (2 MiB each; default 64)"
    )
    p.add_argument("--rounds", type=int, default=5, help="timed rounds of each figure (default 5)")
    p.add_argument("--prompt-tokens", type=int, default=2048, help="resumed prompt length (default 2048)")
    p.add_argument("--no-engine", action="store_true", help="copies only: do not start vLLM")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to this JSON file")
    p.set_defaults(run=run)


def _server(root: Path, block_tokens: int, block_bytes: int, dram: str) -> ServerProcess:
    config = root / "kvstore.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "hbm": {"enabled": "off"},  # what the engine reads comes from kvstore's DRAM
                "dram": {"capacity": dram},
                "disk": {"capacity": "64MiB"},
                "namespaces": [
                    {
                        "name": "vllm",
                        "model": "bench",
                        "block_tokens": block_tokens,
                        "block_bytes": block_bytes,
                    }
                ],
            }
        )
    )
    return ServerProcess(root / "data", config=config)


def copies(root: Path, blocks: int, rounds: int) -> dict[str, Any]:
    import torch

    from kvstore.integrations.vllm.transfer import BlockTransfer, KVLayout
    from kvstore.sdk import Client

    torch.set_num_threads(1)  # as vLLM's CPU engine serves (it drops to one torch thread)
    shape = (blocks * 2, LLAMA8B["kv_heads"], LLAMA8B["block_tokens"], 2 * LLAMA8B["head"])  # CPU layout
    caches = {f"layer.{i}": torch.randn(shape).to(torch.bfloat16) for i in range(LLAMA8B["layers"])}
    layout = KVLayout(caches, blocks * 2)
    nbytes = blocks * layout.block_bytes
    with _server(root, LLAMA8B["block_tokens"], layout.block_bytes, f"{4 * nbytes >> 20}MiB") as server:
        client = Client(server.address)
        assert client.transport() == "shm", "the benchmark needs kvstore's shared memory on this host"
        transfer = BlockTransfer(layout, client, "vllm")
        src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8)
        dst = torch.empty_like(src)
        ids = list(range(blocks))
        memcpy, save, load = [], [], []
        for r in range(-1, rounds):  # round -1 is untimed: first touches of fresh memory
            t = time.perf_counter()
            dst.copy_(src)
            memcpy.append(time.perf_counter() - t)
            keys = [os.urandom(32) for _ in ids]  # fresh keys: a stored key would not be copied
            t = time.perf_counter()
            tiers = transfer.save(keys, ids, None)
            save.append(time.perf_counter() - t)
            assert all(tiers), "kvstore had no room for a round"
            t = time.perf_counter()
            assert transfer.load(keys, [blocks + i for i in ids], None) == blocks
            load.append(time.perf_counter() - t)
            assert torch.equal(caches["layer.0"][blocks:], caches["layer.0"][:blocks])
            client.delete("vllm", keys)
            if r < 0:
                memcpy, save, load = [], [], []
        client.close()
    rows = []
    for i in range(rounds):
        rows.append(
            {
                "round": i + 1,
                "memcpy GB/s": nbytes / memcpy[i] / 1e9,
                "save GB/s": nbytes / save[i] / 1e9,
                "load GB/s": nbytes / load[i] / 1e9,
                "save/memcpy": memcpy[i] / save[i],
                "load/memcpy": memcpy[i] / load[i],
            }
        )
    return {"bytes_per_call": nbytes, "block_bytes": layout.block_bytes, "rounds": rows}


def ttft(root: Path, prompt_tokens: int, rounds: int) -> dict[str, Any]:
    from kvstore.bench.vllm_engine import BLOCK_SIZE, EngineProcess, tiny_block_bytes, write_tiny_llama

    rng = random.Random(0)

    def tokens(n: int) -> list[int]:
        return [rng.randrange(3, 1000) for _ in range(n)]

    rows = []
    with (
        _server(root, BLOCK_SIZE, tiny_block_bytes(), "512MiB") as server,
        EngineProcess(
            write_tiny_llama(root / "model"), server.address, "vllm", log_path=root / "engine.log"
        ) as engine,
    ):
        engine.generate([tokens(prompt_tokens)], max_tokens=1)  # untimed: the first request of an engine
        for r in range(rounds):
            prompt = tokens(prompt_tokens)
            # (c) nothing cached: the prefix is computed (and then saved to kvstore)
            computed = engine.generate([[*prompt, *tokens(16)]], max_tokens=1)
            time.sleep(0.5)  # the save runs after the request, off its path: let it end first
            engine.reset()
            # (b) only kvstore has it: the connector loads it from DRAM (into the engine's cache)
            loaded = engine.generate([[*prompt, *tokens(16)]], max_tokens=1)
            time.sleep(0.5)
            # (a) the prefix is in the engine's cache
            cached = engine.generate([[*prompt, *tokens(16)]], max_tokens=1)
            full = prompt_tokens // BLOCK_SIZE * BLOCK_SIZE
            if not (
                cached["cached"][0] >= full and loaded["cached"][0] >= full and computed["cached"][0] == 0
            ):
                raise RuntimeError(
                    f"round {r + 1}: the prefix was not where it should be: {computed, cached, loaded}"
                )
            rows.append(
                {
                    "round": r + 1,
                    "engine cache ms": cached["seconds"] * 1e3,
                    "kvstore DRAM ms": loaded["seconds"] * 1e3,
                    "recompute ms": computed["seconds"] * 1e3,
                    "DRAM/engine": loaded["seconds"] / cached["seconds"],
                    "recompute/DRAM": computed["seconds"] / loaded["seconds"],
                }
            )
    return {"prompt_tokens": prompt_tokens, "block_tokens": BLOCK_SIZE, "rounds": rows}


def _summary(rows: list[dict[str, Any]]) -> dict[str, str]:
    out = {}
    for key in rows[0]:
        if key != "round":
            values = [row[key] for row in rows]
            out[key] = f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"
    return out


def run(args: argparse.Namespace) -> int:
    if args.blocks < 1 or args.rounds < 1 or args.prompt_tokens < 64:
        print("kvstore bench vllm: --blocks and --rounds must be >= 1, --prompt-tokens >= 64")
        return 2
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kvstore-bench-vllm-") as tmp:
        (Path(tmp) / "copies").mkdir()
        figures["copies"] = copies(Path(tmp) / "copies", args.blocks, args.rounds)
        print_table(
            f"connector copies, {figures['copies']['bytes_per_call'] >> 20} MiB per call "
            f"({figures['copies']['block_bytes'] >> 20} MiB blocks), median (min-max) of {args.rounds}",
            [_summary(figures["copies"]["rounds"])],
        )
        if not args.no_engine:
            try:
                import vllm  # noqa: F401
            except ImportError:
                print("vLLM is not installed (pip install -e '.[vllm]'): no TTFT figures")
            else:
                (Path(tmp) / "engine").mkdir()
                figures["ttft"] = ttft(Path(tmp) / "engine", args.prompt_tokens, args.rounds)
                print_table(
                    f"resumed-request TTFT, {args.prompt_tokens}-token prefix, tiny Llama on CPU, "
                    f"median (min-max) of {args.rounds}",
                    [_summary(figures["ttft"]["rounds"])],
                )
    write_json(args.json, figures)
    return 0
