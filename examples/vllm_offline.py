"""kvstore beside vLLM's offline `LLM`: the engine's KV is saved to kvstore and loaded back, tagged
with an agent session, and warm requests refill the engine's cache when kvstore's plans say so.

    kvstore serve --port 50551 --policy agent --config kvstore.yaml   # a namespace sized for the model
    python examples/vllm_offline.py --model meta-llama/Meta-Llama-3-8B --kvstore 127.0.0.1:50551

The namespace's block_bytes must be the engine's KV bytes per block over all layers (block tokens
x layers x 2 x KV heads x head dim x dtype bytes); the connector logs the number to set if not.
Without arguments it runs the repo's tiny test Llama (random weights, token-id prompts, CPU).
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

from kvstore.integrations.vllm.warm import LLMWarmer
from kvstore.sdk import AgentSession


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model name or path (default: the tiny test Llama)")
    parser.add_argument("--kvstore", default="127.0.0.1:50551")
    parser.add_argument("--namespace", default="vllm")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig

    extra = {}
    model = args.model
    if model is None:  # the tiny Llama of the tests: 16 KiB blocks of 32 tokens
        from kvstore.bench.vllm_engine import BLOCK_SIZE, write_tiny_llama

        model = str(write_tiny_llama(Path(tempfile.mkdtemp()) / "tiny-llama"))
        extra = {"skip_tokenizer_init": True, "block_size": BLOCK_SIZE, "max_model_len": 4096}
    llm = LLM(
        model=model,
        enable_prefix_caching=True,
        kv_transfer_config=KVTransferConfig(
            kv_connector="KVStoreConnector",
            kv_connector_module_path="kvstore.integrations.vllm.connector",
            kv_role="kv_both",
            kv_load_failure_policy="recompute",
            kv_connector_extra_config={"address": args.kvstore, "namespace": args.namespace},
        ),
        **extra,
    )
    warmer = LLMWarmer(llm, args.kvstore, args.namespace)
    warmer.watch()  # warm requests on kvstore's plans

    prompt = [random.randrange(3, 1000) for _ in range(1000)]
    greedy = SamplingParams(temperature=0.0, max_tokens=16)
    with AgentSession(args.kvstore, namespace=args.namespace) as session:
        first = warmer.generate([prompt], greedy, session=session.id)[0]  # saved to kvstore after it ends
        with session.tool_call("pytest", expected_s=5):  # the KV may leave the engine meanwhile...
            llm.reset_prefix_cache()  # (here: the engine forgets it outright)
        # ...and comes back from kvstore for the session's next request
        turn = [*prompt, *first.outputs[0].token_ids, *range(100, 120)]
        second = warmer.generate([turn], greedy, session=session.id)[0]
        print(f"prefix tokens not recomputed: {second.num_cached_tokens} of {len(turn)}")
    warmer.stop()


if __name__ == "__main__":  # vLLM spawns its engine process: build LLM only under __main__
    main()
