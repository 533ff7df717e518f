"""Requests that are not protobuf messages of the method's type: INVALID_ARGUMENT, one log line.

gRPC parses a request before the servicer sees it; a parse error escapes as UNKNOWN and gRPC
logs a full traceback for every such request (a log flood anyone can cause). This interceptor
wraps each method's deserializer so a bad message becomes a marker, and the method answers
INVALID_ARGUMENT for it without running (for a stream, where the bad message arrives).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from kvstore.errors import shorten
from kvstore.server.interceptors import WrappingInterceptor

log = logging.getLogger(__name__)


class _Malformed:
    """Stands for a request message that did not parse."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


async def _replies(out: Any) -> AsyncIterator[Any]:
    """A streaming method's replies, whether it yields them or writes them with context.write."""
    if inspect.isasyncgen(out):
        async for reply in out:
            yield reply
    elif inspect.isawaitable(out):
        await out
    else:
        for reply in out:
            yield reply


def _message(method: str, bad: _Malformed) -> str:
    return f"malformed request for {method}: not a valid protobuf message of its type ({bad.error})"


class MalformedRequests(WrappingInterceptor):
    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def deserialize(data: bytes) -> Any:
            try:
                return parse(data)
            except (DecodeError, ValueError, TypeError) as exc:
                return _Malformed(shorten(str(exc), 200))

        async def refuse(bad: _Malformed, context: grpc.aio.ServicerContext) -> None:
            log.warning("refused a malformed request for %s from %s", method, shorten(context.peer(), 80))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _message(method, bad))

        async def checked(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _Malformed):
                    await refuse(request, context)
                yield request

        if not handler.request_streaming and not handler.response_streaming:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                if isinstance(request, _Malformed):
                    await refuse(request, context)
                return await inner_uu(request, context)

            return handler._replace(request_deserializer=deserialize, unary_unary=unary_unary)
        if not handler.request_streaming:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if isinstance(request, _Malformed):
                    await refuse(request, context)
                async for reply in _replies(inner_us(request, context)):
                    yield reply

            return handler._replace(request_deserializer=deserialize, unary_stream=unary_stream)
        if not handler.response_streaming:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                return await inner_su(checked(requests, context), context)

            return handler._replace(request_deserializer=deserialize, stream_unary=stream_unary)
        inner_ss = handler.stream_stream

        async def stream_stream(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async for reply in _replies(inner_ss(checked(requests, context), context)):
                yield reply

        return handler._replace(request_deserializer=deserialize, stream_stream=stream_stream)
