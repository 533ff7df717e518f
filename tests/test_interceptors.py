"""Adjacent wrapping interceptors run as one, wrapping in grpc.aio's order (first = outermost)."""

from __future__ import annotations

import grpc

from kvstore.server.interceptors import WrappingChain, WrappingInterceptor, fused


class Tag(WrappingInterceptor):
    def __init__(self, name: str, seen: list[str]) -> None:
        super().__init__()
        self.name, self.seen = name, seen

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary

        async def tagged(request: object, context: object) -> object:
            self.seen.append(self.name)
            return await inner(request, context)

        return handler._replace(unary_unary=tagged)


class Other(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        return await continuation(details)


async def test_fused_keeps_order_and_merges_only_neighbours() -> None:
    seen: list[str] = []
    a, b, c = Tag("a", seen), Tag("b", seen), Tag("c", seen)
    other = Other()
    out = fused([a, b, other, c])
    assert len(out) == 3 and out[1] is other and out[2] is c
    assert isinstance(out[0], WrappingChain)

    async def handle(request: object, context: object) -> object:
        seen.append("handler")
        return request

    handler = grpc.unary_unary_rpc_method_handler(handle)
    wrapped = out[0].wrap(handler, "/x.S/M")
    assert await wrapped.unary_unary("req", None) == "req"
    assert seen == ["a", "b", "handler"]
