"""LangGraph / LangChain: kvstore hints from a graph's callbacks, one kvstore session per thread.

    kv = KVStoreCallbackHandler("127.0.0.1:50551", namespace="default")
    graph.invoke(inputs, {"configurable": {"thread_id": "t1"}, "callbacks": [kv]})

A tool starting is BeginToolCall (named after the tool; kvstore learns how long it takes), its end
or error EndToolCall, and the graph's run ending (an answer, or an interrupt for a person)
AwaitingUser. Hints are advisory: kvstore being away never fails the graph.

The engine side, so the KV the engine stores is tagged with the thread's session: wrap the chat
model, and each request carries `kv_transfer_params.session_id` in its body:

    model = with_session(ChatOpenAI(base_url="http://vllm:8000/v1", model=...).bind_tools(tools))

Needs the `agents` extra (`pip install "kvstore[agents]"`).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any
from uuid import UUID

from kvstore.sdk import AgentSession, SessionPool
from kvstore.sdk.core import DEFAULT_ADDRESS
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, ensure_config

from kvstore.proxy.tagging import FIELD, transfer_params


def thread_id(config: Mapping[str, Any] | None) -> str | None:
    """The LangGraph thread of a run: `configurable.thread_id` (LangGraph copies it into metadata)."""
    for part in ("configurable", "metadata"):
        found = ((config or {}).get(part) or {}).get("thread_id")
        if found:
            return str(found)
    return None


class KVStoreCallbackHandler(BaseCallbackHandler):
    """Turns a graph's tool calls and finished runs into kvstore hints, session = thread_id."""

    run_inline = True  # a hint only goes on a queue: no need for an executor thread

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        namespace: str = "default",
        timeout: float = 2.0,
        max_sessions: int = 10_000,
    ) -> None:
        self.sessions: SessionPool[AgentSession] = SessionPool(
            lambda tid: AgentSession(address, session_id=tid, namespace=namespace, timeout=timeout),
            max_sessions,
        )
        self._lock = threading.Lock()
        self._tools: dict[UUID, tuple[AgentSession, str]] = {}  # tool run -> (session, call id)
        self._runs: dict[UUID, str] = {}  # graph run -> thread

    def _session(self, metadata: Mapping[str, Any] | None) -> AgentSession | None:
        tid = thread_id({"metadata": metadata})
        return self.sessions.get(tid) if tid else None

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        session = self._session(metadata) if parent_run_id is None else None
        if session is not None:
            with self._lock:
                self._runs[run_id] = session.id

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._run_over(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._run_over(run_id)

    def _run_over(self, run_id: UUID) -> None:
        with self._lock:
            tid = self._runs.pop(run_id, None)
        if tid is not None:
            self.sessions.get(tid).awaiting_user()

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        session = self._session(metadata)
        if session is None:
            return
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        call_id = session.begin_tool_call(str(name))
        with self._lock:
            self._tools[run_id] = (session, call_id)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._tool_over(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._tool_over(run_id)

    def _tool_over(self, run_id: UUID) -> None:
        with self._lock:
            running = self._tools.pop(run_id, None)
        if running is not None:
            session, call_id = running
            session.end_tool_call(call_id)


def _extra_body(model: Runnable[Any, Any], kwargs: Mapping[str, Any], session: str) -> dict[str, Any]:
    """The request's extra body (the call's, else the binding's, else the model's) with the session."""
    base = kwargs.get("extra_body")
    if base is None and isinstance(model, RunnableBinding):
        base = model.kwargs.get("extra_body")
        model = model.bound
    if base is None:
        base = getattr(model, "extra_body", None)
    base = dict(base or {})
    return {**base, FIELD: transfer_params(base.get(FIELD), session)}


class SessionModel(Runnable[Any, Any]):
    """A chat model (or a binding of one, e.g. with tools) whose requests carry the thread's
    kvstore session as `extra_body={"kv_transfer_params": {"session_id": thread_id}}`."""

    def __init__(self, model: Runnable[Any, Any]) -> None:
        self.model = model

    def _tagged(
        self, config: RunnableConfig | None, kwargs: dict[str, Any]
    ) -> tuple[RunnableConfig, dict[str, Any]]:
        config = ensure_config(config)  # inside a graph node: the node's config, thread_id included
        session = thread_id(config)
        if session is not None:
            kwargs = {**kwargs, "extra_body": _extra_body(self.model, kwargs, session)}
        return config, kwargs

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        config, kwargs = self._tagged(config, kwargs)
        return self.model.invoke(input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        config, kwargs = self._tagged(config, kwargs)
        return await self.model.ainvoke(input, config, **kwargs)

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        config, kwargs = self._tagged(config, kwargs)
        yield from self.model.stream(input, config, **kwargs)

    async def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        config, kwargs = self._tagged(config, kwargs)
        async for chunk in self.model.astream(input, config, **kwargs):
            yield chunk

    def bind_tools(self, tools: Any, **kwargs: Any) -> SessionModel:
        """As the model's `bind_tools`, still tagged (for `create_react_agent` and the like)."""
        return SessionModel(self.model.bind_tools(tools, **kwargs))  # type: ignore[attr-defined]


def with_session(model: Runnable[Any, Any]) -> SessionModel:
    """`model`, its requests tagged with the LangGraph thread's kvstore session."""
    return SessionModel(model)
