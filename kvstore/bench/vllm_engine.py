"""A tiny real vLLM engine in a child process, driven over JSON lines (tests and `kvstore bench vllm`).

vLLM spawns its engine process, so `LLM(...)` is built only under `__main__` here, in a process of
its own: `python -m kvstore.bench.vllm_engine --model-dir D [--kvstore ADDR --namespace NS]`.
The model is a 2-layer Llama (hidden 128, vocab 1024) with seeded random weights and no tokenizer:
prompts are token ids. Commands come on stdin, one JSON object a line; each answer is one stdout
line starting with `@@kvstore ` (vLLM logs to stdout too). `EngineProcess` is the parent's side.

Commands: {"op": "generate", "prompts": [[ids]], "max_tokens": n, "session": s, "warm": bool}
-> {"outputs": [[ids]], "cached": [tokens], "seconds": s}; {"op": "reset"} (the engine's prefix
cache); {"op": "watch", "address": a, "namespace": ns} (start warm requests on kvstore's plans);
{"op": "warms"} -> {"warms": [[session, seconds, error]]}; {"op": "quit"}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MARK = "@@kvstore "
LAYERS, HIDDEN, HEADS, KV_HEADS, VOCAB = 2, 128, 4, 2, 1024
BLOCK_SIZE = 32  # the CPU attention backend wants multiples of 32
DTYPE_BYTES = 2  # bfloat16


def tiny_block_bytes(block_size: int = BLOCK_SIZE) -> int:
    """Bytes of one engine block over all layers: the kvstore namespace's block_bytes."""
    return LAYERS * 2 * block_size * KV_HEADS * (HIDDEN // HEADS) * DTYPE_BYTES


def write_tiny_llama(model_dir: Path, seed: int = 0) -> Path:
    """The model's config and random weights (seeded). Real weights, not vLLM's dummy ones: those
    are so small that the output barely depends on the context, so a wrong KV would go unseen."""
    import torch
    from safetensors.torch import save_file

    model_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "vocab_size": VOCAB,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    gen = torch.Generator().manual_seed(seed)
    head_dim = HIDDEN // HEADS

    def linear(rows: int, cols: int) -> torch.Tensor:
        return (torch.randn(rows, cols, generator=gen) * 2.0 / cols**0.5).to(torch.bfloat16)

    weights = {
        "model.embed_tokens.weight": torch.randn(VOCAB, HIDDEN, generator=gen).to(torch.bfloat16),
        "model.norm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
        "lm_head.weight": linear(VOCAB, HIDDEN),
    }
    for i in range(LAYERS):
        layer = f"model.layers.{i}."
        weights |= {
            layer + "self_attn.q_proj.weight": linear(HEADS * head_dim, HIDDEN),
            layer + "self_attn.k_proj.weight": linear(KV_HEADS * head_dim, HIDDEN),
            layer + "self_attn.v_proj.weight": linear(KV_HEADS * head_dim, HIDDEN),
            layer + "self_attn.o_proj.weight": linear(HIDDEN, HEADS * head_dim),
            layer + "mlp.gate_proj.weight": linear(2 * HIDDEN, HIDDEN),
            layer + "mlp.up_proj.weight": linear(2 * HIDDEN, HIDDEN),
            layer + "mlp.down_proj.weight": linear(HIDDEN, 2 * HIDDEN),
            layer + "input_layernorm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
            layer + "post_attention_layernorm.weight": torch.ones(HIDDEN, dtype=torch.bfloat16),
        }
    save_file(weights, str(model_dir / "model.safetensors"))
    return model_dir


class EngineProcess:
    """The parent's side: start the engine, send commands, read answers."""

    def __init__(
        self,
        model_dir: Path,
        kvstore: str | None,
        namespace: str = "vllm",
        log_path: Path | None = None,
        start_timeout_s: float = 400.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        cmd = [sys.executable, "-m", "kvstore.bench.vllm_engine", "--model-dir", str(model_dir), *extra_args]
        if kvstore is not None:
            cmd += ["--kvstore", kvstore, "--namespace", namespace]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path or model_dir.with_suffix(".engine.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env
        )
        self._lock = threading.Lock()
        self.call({"op": "ping"}, timeout_s=start_timeout_s)

    def _read(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        result: list[str] = []

        def read() -> None:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                if line.startswith(MARK):
                    result.append(line[len(MARK) :])
                    return
                self._log.write(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout_s)
        if not result:
            self._log.flush()
            raise RuntimeError(
                f"vLLM engine gave no answer in {timeout_s:.0f} s (exit code {self.proc.poll()}); "
                f"log: {self.log_path.read_text()[-4000:]}"
            )
        answer = json.loads(result[0])
        if "error" in answer:
            raise RuntimeError(f"engine command failed: {answer['error']}")
        return answer

    def call(self, command: dict[str, Any], timeout_s: float = 300.0) -> dict[str, Any]:
        with self._lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
            return self._read(timeout_s)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_tokens: int = 8,
        session: str | None = None,
        warm: bool = False,
    ) -> dict[str, Any]:
        return self.call(
            {
                "op": "generate",
                "prompts": [list(p) for p in prompts],
                "max_tokens": max_tokens,
                "session": session,
                "warm": warm,
            }
        )

    def reset(self) -> None:
        self.call({"op": "reset"})

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call({"op": "quit"}, timeout_s=60)
                self.proc.wait(60)
            except (RuntimeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- the child process


def _answer(payload: dict[str, Any]) -> None:
    sys.stdout.write(MARK + json.dumps(payload) + "\n")
    sys.stdout.flush()


def _build(args: argparse.Namespace) -> Any:
    from vllm import LLM
    from vllm.config import KVTransferConfig

    transfer = None
    if args.kvstore:
        transfer = KVTransferConfig(
            kv_connector="KVStoreConnector",
            kv_connector_module_path="kvstore.integrations.vllm.connector",
            kv_role="kv_both",
            kv_load_failure_policy="recompute",
            kv_connector_extra_config={
                "address": args.kvstore,
                "namespace": args.namespace,
                "timeout_s": args.timeout_s,
                "retry_s": args.retry_s,
            },
        )
    return LLM(
        model=str(args.model_dir),
        skip_tokenizer_init=True,
        dtype="bfloat16",
        block_size=BLOCK_SIZE,
        max_model_len=4096,
        max_num_seqs=8,
        enable_prefix_caching=True,
        seed=0,
        kv_transfer_config=transfer,
    )


def _serve(args: argparse.Namespace) -> None:
    from vllm import SamplingParams

    from kvstore.integrations.vllm.warm import LLMWarmer

    llm = _build(args)
    warmer = LLMWarmer(llm, args.kvstore or "", args.namespace)

    def run(command: dict[str, Any]) -> dict[str, Any]:
        op = command["op"]
        if op == "ping":
            return {}
        if op == "generate":
            params = SamplingParams(temperature=0.0, max_tokens=command["max_tokens"], ignore_eos=True)
            started = time.perf_counter()
            outputs = warmer.generate(command["prompts"], params, session=command.get("session"))
            seconds = time.perf_counter() - started
            return {
                "outputs": [list(o.outputs[0].token_ids) for o in outputs],
                "cached": [o.num_cached_tokens for o in outputs],
                "seconds": seconds,
            }
        if op == "reset":
            with warmer.lock:
                return {"reset": bool(llm.reset_prefix_cache())}
        if op == "watch":
            warmer.watch()
            return {}
        if op == "warms":
            return {"warms": [[w.session, w.seconds, w.error] for w in warmer.done]}
        raise ValueError(f"unknown op {op!r}")

    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            warmer.stop()
            _answer({})
            break
        try:
            _answer(run(command))
        except Exception as exc:
            _answer({"error": repr(exc)})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--kvstore", default="")
    parser.add_argument("--namespace", default="vllm")
    parser.add_argument("--timeout-s", type=float, default=1.0)
    parser.add_argument("--retry-s", type=float, default=2.0)
    _serve(parser.parse_args())
