"""OpenAI Agents SDK: kvstore hints from a run's lifecycle hooks, for one kvstore session.

    hooks = KVStoreRunHooks("conv-42", address="127.0.0.1:50551")
    result = await Runner.run(agent, task, **hooks.run_kwargs())

A local tool starting is BeginToolCall (named after the tool; kvstore learns how long it takes),
its end EndToolCall, the agent's final output AwaitingUser. Hints are advisory: kvstore being
away never fails the run.

`run_kwargs()` (or `run_config()`, to pass your own RunConfig through) also sends the session to
the engine: every model request of the run carries `kv_transfer_params.session_id` in its body
(`ModelSettings.extra_body`, merged with the agent's and the run's own extra body).

Needs the `agents` extra (`pip install "kvstore[agents]"`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agents import Agent, ModelSettings, RunConfig, RunContextWrapper, RunHooks, Tool
from kvstore.sdk import AsyncAgentSession
from kvstore.sdk.core import DEFAULT_ADDRESS

from kvstore.proxy.tagging import FIELD, transfer_params


class KVStoreRunHooks(RunHooks[Any]):
    def __init__(
        self,
        session_id: str,
        address: str = DEFAULT_ADDRESS,
        namespace: str = "default",
        timeout: float = 2.0,
    ) -> None:
        self.session = AsyncAgentSession(address, session_id=session_id, namespace=namespace, timeout=timeout)
        self._calls: dict[object, str] = {}  # the tool call (its id, else the tool) -> our call id
        self._config: RunConfig | None = None
        self._run_settings: ModelSettings | None = None

    def run_config(self, base: RunConfig | None = None) -> RunConfig:
        """`base` (or a default RunConfig) whose model requests carry the session to the engine."""
        base = base or RunConfig()
        self._run_settings = base.model_settings
        self._config = dataclasses.replace(base, model_settings=self._tagged(None))
        return self._config

    def run_kwargs(self, run_config: RunConfig | None = None) -> dict[str, Any]:
        """`hooks=` and `run_config=` for `Runner.run` / `run_sync` / `run_streamed`."""
        return {"hooks": self, "run_config": self.run_config(run_config)}

    def _tagged(self, agent: Agent[Any] | None) -> ModelSettings:
        """The run's model settings, with an extra body that merges the agent's, the run's and the
        session (a run-level extra body replaces an agent's in the SDK, so both go in it)."""
        run = self._run_settings or ModelSettings()
        body = {
            **((agent.model_settings.extra_body or {}) if agent is not None else {}),
            **(run.extra_body or {}),
        }
        body[FIELD] = transfer_params(body.get(FIELD), self.session.id)
        return dataclasses.replace(run, extra_body=body)

    async def on_agent_start(self, context: Any, agent: Agent[Any]) -> None:
        if self._config is not None:  # each agent of the run (handoffs) keeps its own extra body
            self._config.model_settings = self._tagged(agent)

    async def on_llm_start(self, context: RunContextWrapper[Any], agent: Agent[Any], *args: Any) -> None:
        """The model is called again: any tool still open is over (its end was lost to an error)."""
        for key in list(self._calls):
            self.session.end_tool_call(self._calls.pop(key))

    async def on_tool_start(self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool) -> None:
        self._calls[self._key(context, tool)] = self.session.begin_tool_call(tool.name)

    async def on_tool_end(
        self, context: RunContextWrapper[Any], agent: Agent[Any], tool: Tool, result: object
    ) -> None:
        call_id = self._calls.pop(self._key(context, tool), None)
        if call_id is not None:
            self.session.end_tool_call(call_id)

    async def on_agent_end(self, context: Any, agent: Agent[Any], output: Any) -> None:
        self.session.awaiting_user()

    @staticmethod
    def _key(context: RunContextWrapper[Any], tool: Tool) -> object:
        return getattr(context, "tool_call_id", None) or id(tool)
