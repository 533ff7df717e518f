"""Channels that carry a bearer token and, optionally, TLS.

The token goes as `authorization: Bearer <token>` on every call, added by a client interceptor:
gRPC's own call credentials refuse to travel over a plaintext channel, and kvstore is most often a
loopback or Unix-socket sidecar where TLS buys nothing. Without an explicit token the SDK reads
`KVSTORE_TOKEN`, so engines and agents pick it up from their environment unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

TOKEN_ENV = "KVSTORE_TOKEN"


def resolve_token(token: str | None) -> str | None:
    """`token`, else $KVSTORE_TOKEN, else None (no token sent). An empty string sends none."""
    if token is None:
        token = os.environ.get(TOKEN_ENV)
    return token or None


@dataclass(frozen=True, slots=True)
class Tls:
    """Client side of TLS: the CA that signed the server's cert (None: the system's roots), and a
    client certificate + key for servers that require one (mutual TLS)."""

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_certificates, self.private_key, self.certificate_chain)


def tls_config(
    root_certificates: bytes | None, private_key: bytes | None, certificate_chain: bytes | None, tls: bool
) -> Tls | None:
    if root_certificates is None and private_key is None and certificate_chain is None and not tls:
        return None
    if (private_key is None) != (certificate_chain is None):
        raise ValueError("private_key and certificate_chain go together (a client certificate)")
    return Tls(root_certificates, private_key, certificate_chain)


def _with_token(details: Any, token: str, make: Callable[..., Any]) -> Any:
    metadata = [*(details.metadata or ()), ("authorization", f"Bearer {token}")]
    return make(details.method, details.timeout, metadata, details.credentials, details.wait_for_ready)


class _SyncDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(
        self, method: str, timeout: float | None, metadata: Any, credentials: Any, wait_for_ready: Any
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = None


class _SyncToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self.token = token

    def _call(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(_with_token(details, self.token, _SyncDetails), request)

    intercept_unary_unary = _call
    intercept_unary_stream = _call
    intercept_stream_unary = _call
    intercept_stream_stream = _call


class _AsyncToken:
    def __init__(self, token: str) -> None:
        self.token = token

    async def _call(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_token(details, self.token, grpc.aio.ClientCallDetails), request)


# grpc.aio files each interceptor under the first kind it is an instance of (an if/elif chain), so
# one object deriving from all four kinds would only see unary-unary calls: one class per kind.
class _AsyncUnaryUnary(_AsyncToken, grpc.aio.UnaryUnaryClientInterceptor):
    intercept_unary_unary = _AsyncToken._call


class _AsyncUnaryStream(_AsyncToken, grpc.aio.UnaryStreamClientInterceptor):
    intercept_unary_stream = _AsyncToken._call


class _AsyncStreamUnary(_AsyncToken, grpc.aio.StreamUnaryClientInterceptor):
    intercept_stream_unary = _AsyncToken._call


class _AsyncStreamStream(_AsyncToken, grpc.aio.StreamStreamClientInterceptor):
    intercept_stream_stream = _AsyncToken._call


def channel(target: str, options: list[tuple[str, Any]], token: str | None, tls: Tls | None) -> grpc.Channel:
    if tls is None:
        ch = grpc.insecure_channel(target, options=options)
    else:
        ch = grpc.secure_channel(target, tls.credentials(), options=options)
    return ch if token is None else grpc.intercept_channel(ch, _SyncToken(token))


def aio_channel(
    target: str, options: list[tuple[str, Any]], token: str | None, tls: Tls | None
) -> grpc.aio.Channel:
    kinds = (_AsyncUnaryUnary, _AsyncUnaryStream, _AsyncStreamUnary, _AsyncStreamStream)
    interceptors = None if token is None else [kind(token) for kind in kinds]
    if tls is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(target, tls.credentials(), options=options, interceptors=interceptors)
