"""Turn store exceptions into gRPC statuses with the store's actionable message."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import grpc

from kvstore.errors import KVStoreError

log = logging.getLogger(__name__)


# A status message travels in a trailer; one over the metadata limit turns the status itself into
# RESOURCE_EXHAUSTED. Messages echo inputs shortened (errors.shorten); this is the last guard.
MAX_DETAILS = 2000


def details_of(exc: KVStoreError) -> str:
    text = str(exc)
    return text if len(text) <= MAX_DETAILS else text[:MAX_DETAILS] + "…"


def status_of(exc: KVStoreError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL)


def grpc_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a servicer method (coroutine or async generator) so store errors become statuses."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def stream(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except KVStoreError as exc:
                await context.abort(status_of(exc), details_of(exc))

        return stream

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except KVStoreError as exc:
            await context.abort(status_of(exc), details_of(exc))

    return unary
