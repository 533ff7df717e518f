"""End to end against a real vLLM engine (CPU build) and a real kvstore server: the connector saves
the engine's KV and loads it back, sessions share what they share, hints move what the engine
stored, warm requests fill the engine's own cache, and the engine outlives kvstore.

One engine for the module (it takes a minute to start on 2 cores), driven over JSON lines by
`kvstore.bench.vllm_engine`; the scenarios run in file order and the last one stops kvstore.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import yaml
from kvstore.sdk import AgentSession

from kvstore.bench.vllm_engine import BLOCK_SIZE, EngineProcess, tiny_block_bytes, write_tiny_llama
from kvstore.server.process import ServerProcess
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

NS = "vllm"


class Setup:
    def __init__(self, server: ServerProcess, engine: EngineProcess) -> None:
        self.server = server
        self.engine = engine
        self.channel = grpc.insecure_channel(server.address)
        self.admin = pb_grpc.AdminStub(self.channel)
        self.rng = random.Random(7)

    def prompt(self, n: int) -> list[int]:
        return [self.rng.randrange(3, 1000) for _ in range(n)]

    def stats(self) -> pb.StatsResponse:
        return self.admin.Stats(pb.StatsRequest(), timeout=10)

    def hits(self) -> int:
        return sum(t.hits for t in self.stats().tiers)

    def session_tiers(self, session: str) -> dict[str, int]:
        for s in self.admin.ListSessions(pb.ListSessionsRequest(), timeout=10).sessions:
            if s.session == session:
                return {tier: n for tier, n in s.bytes_per_tier.items() if n}
        return {}

    def blocks(self) -> list[pb.BlockInfo]:
        return list(self.admin.ListBlocks(pb.ListBlocksRequest(namespace=NS, limit=10000), timeout=10).blocks)


def eventually(check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("vllm")
    config = root / "kvstore.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "policy": "agent",
                "agent": {"offload_eagerly": True},  # a tool call moves the session's KV down at once
                "hbm": {"enabled": "on", "device": "cpu", "capacity": "32MiB"},
                "dram": {"capacity": "64MiB"},
                "disk": {"capacity": "64MiB"},
                "namespaces": [
                    {
                        "name": NS,
                        "model": "tiny-llama",
                        "block_tokens": BLOCK_SIZE,
                        "block_bytes": tiny_block_bytes(),
                    }
                ],
            }
        )
    )
    server = ServerProcess(root / "data", config=config)
    engine = EngineProcess(write_tiny_llama(root / "model"), server.address, NS, log_path=root / "engine.log")
    try:
        yield Setup(server, engine)
    finally:
        engine.close()
        if server.proc.poll() is None:
            server.terminate()


def test_a_resumed_request_gets_its_kv_back_from_kvstore(setup: Setup) -> None:
    prompt = setup.prompt(300)  # 9 full blocks of 32 tokens (+ a partial one)
    first = setup.engine.generate([prompt], max_tokens=12, session="resume")
    assert first["cached"] == [0]  # computed from scratch: the reference output
    # the request finished: its full blocks (prompt and output, 311 tokens with KV) are saved
    assert eventually(lambda: setup.stats().blocks >= 9)
    setup.engine.reset()  # the engine forgets; only kvstore has the KV now
    hits = setup.hits()
    again = setup.engine.generate([prompt], max_tokens=12, session="resume")
    assert again["cached"] == [9 * BLOCK_SIZE]  # the whole prefix came from kvstore...
    assert setup.hits() - hits == 9  # ...read from kvstore's tiers
    assert again["outputs"] == first["outputs"]  # and greedy decoding is unchanged by it


def test_two_sessions_sharing_a_prefix_store_it_once(setup: Setup) -> None:
    shared = setup.prompt(8 * BLOCK_SIZE)
    before = {b.key for b in setup.blocks()}
    setup.engine.generate([[*shared, *setup.prompt(2 * BLOCK_SIZE)]], max_tokens=8, session="left")
    setup.engine.generate([[*shared, *setup.prompt(2 * BLOCK_SIZE)]], max_tokens=8, session="right")

    def saved() -> list[pb.BlockInfo]:
        new = [b for b in setup.blocks() if b.key not in before]
        return new if len(new) >= 12 else []

    new = eventually(saved)
    assert len(new) == 8 + 2 + 2  # the shared 8 blocks once, each session's own 2 blocks
    both = [b for b in new if {"left", "right"} <= set(b.sessions)]
    assert len(both) == 8  # the shared blocks are both sessions'
    assert setup.session_tiers("left") and setup.session_tiers("right")


def test_an_agent_hint_moves_the_sessions_blocks_between_kvstore_tiers(setup: Setup) -> None:
    prompt = setup.prompt(6 * BLOCK_SIZE + 5)
    setup.engine.generate([prompt], max_tokens=4, session="agent")
    placed = eventually(lambda: setup.session_tiers("agent").get("hbm", 0) >= 6 * tiny_block_bytes())
    assert placed, setup.session_tiers("agent")
    with AgentSession(setup.server.address, session_id="agent", namespace=NS) as session:
        call = session.begin_tool_call("pytest", expected_s=60.0)  # eagerly offloaded while it runs
        assert session.flush()
        moved = eventually(lambda: set(setup.session_tiers("agent")) == {"dram"})
        assert moved, setup.session_tiers("agent")
        session.end_tool_call(call)  # back early: the KV comes back to the top tier at once
        assert session.wait_ready(timeout_s=10.0)
        assert set(setup.session_tiers("agent")) == {"hbm"}
        setup.engine.reset()
        hits = setup.hits()
        again = setup.engine.generate([prompt], max_tokens=4, session="agent")
        assert again["cached"] == [6 * BLOCK_SIZE] and setup.hits() - hits == 6


def test_a_warm_plan_puts_the_sessions_prefix_in_the_engines_own_cache(setup: Setup) -> None:
    setup.engine.call({"op": "watch", "address": setup.server.address, "namespace": NS})
    prompt = setup.prompt(5 * BLOCK_SIZE + 3)
    answer = setup.engine.generate([prompt], max_tokens=4, session="warm")["outputs"][0]
    assert eventually(lambda: setup.session_tiers("warm"))
    setup.engine.reset()  # the engine's LRU took it: only kvstore has the session's KV
    with AgentSession(setup.server.address, session_id="warm", namespace=NS) as session:
        session.awaiting_user()
        hits = setup.hits()
        session.user_active()  # the person types: the policy plans a warm, the engine runs it
        assert session.flush()
        warmed = eventually(
            lambda: [w for w in setup.engine.call({"op": "warms"})["warms"] if w[0] == "warm"]
        )
        assert warmed and warmed[0][2] == "", warmed
        assert setup.hits() - hits == 5  # the warm request loaded the prefix from kvstore
        hits = setup.hits()
        turn = [*prompt, *answer, *setup.prompt(40)]  # the session's next request
        reply = setup.engine.generate([turn], max_tokens=4, session="warm")
        assert reply["cached"][0] >= 5 * BLOCK_SIZE  # its prefix is in the engine's cache...
        assert setup.hits() == hits  # ...not read from kvstore on the request's path


def test_the_engine_keeps_serving_when_kvstore_stops(setup: Setup) -> None:
    prompt = setup.prompt(4 * BLOCK_SIZE + 7)
    reference = setup.engine.generate([prompt], max_tokens=6)["outputs"]
    setup.server.kill()
    setup.engine.reset()
    started = time.monotonic()
    for _ in range(3):  # a lookup fails at once (connection refused), then kvstore is left alone
        assert setup.engine.generate([prompt], max_tokens=6)["outputs"] == reference
        assert setup.engine.generate([setup.prompt(100)], max_tokens=6)["outputs"]
    assert time.monotonic() - started < 30
