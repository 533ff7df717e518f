"""AgentHints service: what agent frameworks call (through the SDK's AgentSession)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from kvstore.errors import InvalidArgument
from kvstore.hints import MAX_DURATION_S, Hints
from kvstore.server.errors import grpc_errors
from kvstore.server.hint_worker import HintWorker
from kvstore.sessions import Session
from kvstore.store import Store
from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

READY_POLL_S = 0.005
T = TypeVar("T")


def _reply(session: Session) -> pb.SessionReply:
    return pb.SessionReply(session=session.id, state=session.state.value, blocks=session.blocks)


class AgentHintsService(pb_grpc.AgentHintsServicer):
    """Hints touch only metadata, but under the store's lock: they run on the hint worker's
    thread (in arrival order), never on the event loop. The moves they plan run on the mover's."""

    def __init__(self, store: Store, worker: HintWorker) -> None:
        self.hints = Hints(store)
        self._worker = worker
        self._warned = store.policy.uses_hints

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._warned:
            self._warned = True  # once per server: a misconfiguration, not something to log per hint
            log.warning(
                "agent hints are arriving but policy %r ignores them; serve with --policy agent "
                "to move KV by them",
                self.hints.store.policy.name,
            )
        # In the caller's context (its tenant, kvstore.tenancy): the hint checks whose session it
        # names on the worker, under the store's lock, where it acts on it.
        return await self._worker.run(contextvars.copy_context().run, fn, *args)

    @grpc_errors
    async def OpenSession(
        self, request: pb.OpenSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.SessionReply:
        return _reply(await self._run(self.hints.open_session, request.session, request.namespace))

    @grpc_errors
    async def CloseSession(
        self, request: pb.SessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.SessionReply:
        return _reply(await self._run(self.hints.close_session, request.session))

    @grpc_errors
    async def BindChain(
        self, request: pb.BindChainRequest, context: grpc.aio.ServicerContext
    ) -> pb.SessionReply:
        return _reply(
            await self._run(self.hints.bind, request.session, request.namespace, list(request.keys))
        )

    @grpc_errors
    async def BeginToolCall(
        self, request: pb.BeginToolCallRequest, context: grpc.aio.ServicerContext
    ) -> pb.ToolCallReply:
        expected = request.expected_s if request.HasField("expected_s") and request.expected_s != 0 else None
        plan = await self._run(
            self.hints.begin_tool_call, request.session, request.tool_name, expected, request.call_id
        )
        return pb.ToolCallReply(
            call_id=plan.call_id, expected_s=plan.expected_s, prefetch_in_s=plan.prefetch_in_s
        )

    @grpc_errors
    async def EndToolCall(
        self, request: pb.EndToolCallRequest, context: grpc.aio.ServicerContext
    ) -> pb.ToolCallReply:
        plan = await self._run(self.hints.end_tool_call, request.call_id)
        return pb.ToolCallReply(call_id=plan.call_id, expected_s=plan.expected_s)

    @grpc_errors
    async def AwaitingUser(
        self, request: pb.SessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.SessionReply:
        return _reply(await self._run(self.hints.awaiting_user, request.session))

    @grpc_errors
    async def UserActive(
        self, request: pb.SessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.SessionReply:
        return _reply(await self._run(self.hints.user_active, request.session))

    @grpc_errors
    async def AnnounceFanout(
        self, request: pb.AnnounceFanoutRequest, context: grpc.aio.ServicerContext
    ) -> pb.FanoutReply:
        fanout = await self._run(
            self.hints.announce_fanout, request.session, request.n, request.ttl_s, request.fanout_id
        )
        return pb.FanoutReply(fanout_id=fanout.fanout_id, branches_left=fanout.branches_left)

    @grpc_errors
    async def BranchDone(
        self, request: pb.BranchDoneRequest, context: grpc.aio.ServicerContext
    ) -> pb.FanoutReply:
        left = await self._run(self.hints.branch_done, request.fanout_id)
        return pb.FanoutReply(fanout_id=request.fanout_id, branches_left=left)

    @grpc_errors
    async def WaitReady(
        self, request: pb.WaitReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.WaitReadyReply:
        if not 0 <= request.timeout_s <= MAX_DURATION_S:
            raise InvalidArgument(
                f"timeout_s must be between 0 and {MAX_DURATION_S:.0f}, got {request.timeout_s}"
            )
        deadline = time.monotonic() + request.timeout_s
        while True:
            state = await asyncio.to_thread(self.hints.residency, request.session)
            if state.ready or time.monotonic() >= deadline:
                return pb.WaitReadyReply(
                    ready=state.ready, bytes_in_hbm=state.bytes_top, bytes_elsewhere=state.bytes_elsewhere
                )
            await asyncio.sleep(min(READY_POLL_S, max(0.0, deadline - time.monotonic())))
