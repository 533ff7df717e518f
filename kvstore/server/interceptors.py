"""A base for server interceptors that wrap each method's handler the same way on every call.

grpc.aio asks every interceptor for a handler on every call. Building wrapped handlers anew each
time costs more than a hint's own work, so the wrapped handler is kept per method and reused while
the handler under it is the same object (the registered one, or another cached wrapper). Each
interceptor is also a coroutine call and a continuation per RPC, so adjacent wrapping
interceptors run as one (`fused`); and where no other interceptor has to run outside them, they
run as no interceptor at all: `WrappingRegistry` wraps the servicers' handlers as they are
registered (with the timing and malformed-request layers, the interceptor chain was ~12% of a
hint's cost against a bare server).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import grpc

_Kept = dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]]


def _kept(
    kept: _Kept, method: str, handler: grpc.RpcMethodHandler, wrap: Callable[..., grpc.RpcMethodHandler]
) -> grpc.RpcMethodHandler:
    """`wrap(handler, method)`, made once and reused while the handler under it is the same object."""
    pair = kept.get(method)
    if pair is None or pair[0] is not handler:
        pair = kept[method] = (handler, wrap(handler, method))
    return pair[1]


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        self._wrapped: _Kept = {}

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        raise NotImplementedError

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:  # an unknown method: nothing to wrap, nothing to keep
            return handler
        return _kept(self._wrapped, details.method, handler, self.wrap)


class WrappingChain(WrappingInterceptor):
    """Several wrapping interceptors as one: the first wraps outermost, as in grpc.aio's list."""

    def __init__(self, layers: Sequence[WrappingInterceptor]) -> None:
        super().__init__()
        self.layers = list(layers)

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        for layer in reversed(self.layers):
            handler = layer.wrap(handler, method)
        return handler


def fused(interceptors: Sequence[grpc.aio.ServerInterceptor]) -> list[grpc.aio.ServerInterceptor]:
    """The same interceptors in the same order, each run of adjacent wrapping ones made one."""
    out: list[grpc.aio.ServerInterceptor] = []
    run: list[WrappingInterceptor] = []
    for interceptor in [*interceptors, None]:
        if isinstance(interceptor, WrappingInterceptor):
            run.append(interceptor)
            continue
        if run:
            out.append(run[0] if len(run) == 1 else WrappingChain(run))
            run = []
        if interceptor is not None:
            out.append(interceptor)
    return out


class _WrappedHandlers(grpc.GenericRpcHandler):
    """A generic handler whose method handlers come wrapped, each kept per method."""

    def __init__(self, inner: grpc.GenericRpcHandler, wrap: Callable[..., grpc.RpcMethodHandler]) -> None:
        self._inner = inner
        self._wrap = wrap
        self._wrapped: _Kept = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(details)
        if handler is None:
            return None
        return _kept(self._wrapped, details.method, handler, self._wrap)


class WrappingRegistry:
    """What `add_<Service>Servicer_to_server` registers with: the server, with every handler
    wrapped by `layers` (first = outermost) the way those interceptors would wrap it."""

    def __init__(self, server: grpc.aio.Server, layers: Sequence[WrappingInterceptor]) -> None:
        self._server = server
        self._chain = WrappingChain(layers)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_WrappedHandlers(h, self._chain.wrap) for h in handlers))

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(
            service, {name: self._chain.wrap(h, f"/{service}/{name}") for name, h in handlers.items()}
        )
