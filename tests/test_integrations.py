"""The agent-framework integrations with the real packages: a LangGraph graph and an OpenAI Agents
SDK agent, each with a real OpenAI client calling the stub engine over HTTP, drive a tool call
against a real kvstore server. kvstore must see the tool call while the tool runs, the engine must
get the session in kv_transfer_params, and the finished run must wait on the user."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ThreadedServer, make_settings

from kvstore.bench.stub_upstream import AppThread, StubUpstream
from kvstore.sessions import AwayKind

pytest.importorskip("langgraph", reason="needs the agents extra: pip install -e '.[agents]'")
pytest.importorskip("agents", reason="needs the agents extra: pip install -e '.[agents]'")


class Engine:
    def __init__(self) -> None:
        self.stub = StubUpstream(chunks=3)
        self.thread = AppThread(self.stub.app())
        self.base_url = f"{self.thread.url}/v1"

    def chat_bodies(self) -> list[dict[str, Any]]:
        return [r["body"] for r in self.stub.requests if r["path"] == "/v1/chat/completions"]


@pytest.fixture
def kvstore(tmp_path: Path) -> Iterator[ThreadedServer]:
    server = ThreadedServer(make_settings(tmp_path / "data", policy="agent"))
    yield server
    server.stop()


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = Engine()
    yield engine
    engine.thread.stop()


def state(server: ThreadedServer, session: str) -> tuple[str, str] | None:
    live = server.store.sessions.sessions.get(session)
    return (live.state.value, live.tool.tool_name if live.tool else "") if live else None


def test_langgraph_thread_is_a_session(kvstore: ThreadedServer, engine: Engine) -> None:
    from kvstore.integrations.langgraph import KVStoreCallbackHandler, with_session
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.graph import START, MessagesState, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    handler = KVStoreCallbackHandler(kvstore.address, namespace="t")
    seen: list[tuple[str, str] | None] = []

    @tool
    def run_tests() -> str:
        """Run the project's tests."""
        handler.sessions.get("thread-1").flush()
        seen.append(state(kvstore, "thread-1"))
        return "2 passed"

    chat = ChatOpenAI(base_url=engine.base_url, api_key="none", model="m", extra_body={"top_k": 5})
    model = with_session(chat.bind_tools([run_tests]))
    graph = StateGraph(MessagesState)
    graph.add_node("model", lambda s: {"messages": [model.invoke(s["messages"])]})
    graph.add_node("tools", ToolNode([run_tests]))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    app = graph.compile()

    result = app.invoke(
        {"messages": [("user", "fix the tests")]},
        {"configurable": {"thread_id": "thread-1"}, "callbacks": [handler]},
    )
    assert result["messages"][-1].content.startswith("word0")
    assert seen == [("in_tool", "run_tests")]
    assert handler.sessions.get("thread-1").flush()
    assert state(kvstore, "thread-1") == ("awaiting_user", "")
    bodies = engine.chat_bodies()
    assert len(bodies) == 2
    assert all(b["kv_transfer_params"] == {"session_id": "thread-1"} and b["top_k"] == 5 for b in bodies)
    registry = kvstore.store.sessions
    assert registry.hints["begin_tool"] == 1 and registry.hints["end_tool"] == 1
    learned = registry.returns.specific[AwayKind.TOOL_UNANNOUNCED]
    assert list(learned) == ["run_tests"]  # no duration given: kvstore learns it


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # create_react_agent: still the prebuilt most use
async def test_langgraph_prebuilt_agent_async(kvstore: ThreadedServer, engine: Engine) -> None:
    from kvstore.integrations.langgraph import KVStoreCallbackHandler, with_session
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.prebuilt import create_react_agent

    handler = KVStoreCallbackHandler(kvstore.address, namespace="t")

    @tool
    async def run_tests() -> str:
        """Run the project's tests."""
        await asyncio.to_thread(handler.sessions.get("t2").flush)
        assert state(kvstore, "t2") == ("in_tool", "run_tests")
        return "2 passed"

    agent = create_react_agent(
        with_session(ChatOpenAI(base_url=engine.base_url, api_key="none", model="m")), [run_tests]
    )
    await agent.ainvoke(
        {"messages": [("user", "go")]}, {"configurable": {"thread_id": "t2"}, "callbacks": [handler]}
    )
    assert handler.sessions.get("t2").flush()
    assert state(kvstore, "t2") == ("awaiting_user", "")
    assert [b["kv_transfer_params"] for b in engine.chat_bodies()] == [{"session_id": "t2"}] * 2


async def test_openai_agents_run_hooks(kvstore: ThreadedServer, engine: Engine) -> None:
    from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, RunConfig, Runner, function_tool
    from kvstore.integrations.openai_agents import KVStoreRunHooks
    from openai import AsyncOpenAI

    hooks = KVStoreRunHooks("conv-42", kvstore.address, namespace="t")
    seen: list[tuple[str, str] | None] = []

    @function_tool
    async def run_tests() -> str:
        """Run the project's tests."""
        await hooks.session.flush()
        seen.append(state(kvstore, "conv-42"))
        return "2 passed"

    model = OpenAIChatCompletionsModel(
        model="m", openai_client=AsyncOpenAI(base_url=engine.base_url, api_key="none")
    )
    agent = Agent(
        name="fixer",
        instructions="Fix the tests.",
        model=model,
        tools=[run_tests],
        model_settings=ModelSettings(extra_body={"top_k": 5}),
    )
    result = await Runner.run(agent, "fix the tests", **hooks.run_kwargs(RunConfig(tracing_disabled=True)))
    assert result.final_output.startswith("word0")
    assert seen == [("in_tool", "run_tests")]
    assert await hooks.session.flush()
    assert state(kvstore, "conv-42") == ("awaiting_user", "")
    bodies = engine.chat_bodies()
    assert len(bodies) == 2
    assert all(b["kv_transfer_params"] == {"session_id": "conv-42"} and b["top_k"] == 5 for b in bodies)
    assert kvstore.store.sessions.hints["end_tool"] == 1


async def test_integrations_are_advisory_when_kvstore_is_away(engine: Engine) -> None:
    import socket

    from agents import Agent, OpenAIChatCompletionsModel, RunConfig, Runner, function_tool
    from kvstore.integrations.openai_agents import KVStoreRunHooks
    from openai import AsyncOpenAI

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        away = f"127.0.0.1:{s.getsockname()[1]}"

    @function_tool
    def run_tests() -> str:
        """Run the project's tests."""
        return "2 passed"

    hooks = KVStoreRunHooks("conv-x", away, timeout=0.2)
    model = OpenAIChatCompletionsModel(
        model="m", openai_client=AsyncOpenAI(base_url=engine.base_url, api_key="none")
    )
    agent = Agent(name="fixer", model=model, tools=[run_tests])
    result = await Runner.run(agent, "fix", **hooks.run_kwargs(RunConfig(tracing_disabled=True)))
    assert result.final_output.startswith("word0")
    assert await hooks.session.flush() and not hooks.session.healthy
