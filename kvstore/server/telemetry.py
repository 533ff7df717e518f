"""What operators see beyond the store's counters: logs as text or JSON lines, RPC latency
histograms and build info for Prometheus, and OpenTelemetry traces of RPCs when enabled.

RPC timing is a grpc.aio server interceptor, so every service is measured the same way and
nothing in the handlers knows about it. Its histogram lives in the server's own registry (tests
run many servers in one process; the global registry would collide).
"""

from __future__ import annotations

import inspect
import logging
import platform
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Histogram, Info
from pythonjsonlogger.json import JsonFormatter

from kvstore import __version__
from kvstore.server.interceptors import WrappingInterceptor

log = logging.getLogger(__name__)

# Codes a client causes: logged at info (its request was wrong); the rest are the server's.
CLIENT_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Latencies from a Lookup (~1 ms) to a large Put or a long WaitReady (seconds).
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Root logging for `kvstore serve` / `kvstore proxy`: text lines, or one JSON object per line
    carrying each record's `extra` fields (session, tier, bytes...) as keys."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields={"levelname": "level"}
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class RpcMetrics:
    """Per-RPC latency (by service, method and status code) and build info, in one registry."""

    def __init__(self, registry: CollectorRegistry, policy: str) -> None:
        self.seconds = Histogram(
            "kvstore_rpc_duration_seconds",
            "Time to answer an RPC, by service, method and status code",
            ["service", "method", "code"],
            buckets=RPC_BUCKETS,
            registry=registry,
        )
        self._children: dict[tuple[str, str, grpc.StatusCode], Any] = {}
        Info("kvstore_build", "kvstore build and runtime", registry=registry).info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "grpc": grpc.__version__,
                "policy": policy,
            }
        )

    def observe(self, service: str, name: str, code: grpc.StatusCode, seconds: float) -> None:
        child = self._children.get((service, name, code))
        if child is None:  # labels() validates and locks on every call: kept per series instead
            child = self._children[(service, name, code)] = self.seconds.labels(service, name, code.name)
        child.observe(seconds)
        if code is not grpc.StatusCode.OK:
            log.log(
                logging.INFO if code in CLIENT_CODES else logging.WARNING,
                "%s failed: %s after %.1f ms",
                name,
                code.name,
                seconds * 1e3,
                extra={"rpc": name, "code": code.name, "ms": round(seconds * 1e3, 3)},
            )


def _labels(method: str) -> tuple[str, str]:
    """'/kvstore.v1.KVStore/Lookup' -> ('KVStore', 'Lookup')."""
    _, service, name = method.split("/", 2) if method.count("/") == 2 else ("", "", method)
    return service.rsplit(".", 1)[-1], name


def _code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.OK if code in (None, 0) else grpc.StatusCode.UNKNOWN


class TimingInterceptor(WrappingInterceptor):
    """Times every RPC from the handler's start to its last message, whatever its shape."""

    def __init__(self, metrics: RpcMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        observe = self.metrics.observe
        service, name = _labels(method)  # once per method: the wrapper is kept (interceptors.py)

        def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, error = time.perf_counter(), None
                try:
                    return await behavior(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    observe(service, name, _code(context, error), time.perf_counter() - started)

            return timed

        def streaming(behavior: Callable[..., Any]) -> Callable[..., Any]:
            if not inspect.isasyncgenfunction(behavior):
                return unary(behavior)  # a coroutine that writes with context.write (or aborts)

            async def timed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started, error = time.perf_counter(), None
                try:
                    async for reply in behavior(request, context):
                        yield reply
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    observe(service, name, _code(context, error), time.perf_counter() - started)

            return timed

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                streaming(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        return grpc.stream_stream_rpc_method_handler(
            streaming(handler.stream_stream), handler.request_deserializer, handler.response_serializer
        )


def tracing_interceptor(service_name: str, otlp_endpoint: str | None) -> grpc.aio.ServerInterceptor:
    """OpenTelemetry spans for every RPC, exported over OTLP/gRPC to `otlp_endpoint` (or wherever
    the standard OTEL_* environment says, when None). Sets the process's tracer provider, once."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.grpc import aio_server_interceptor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint)))
        trace.set_tracer_provider(provider)
    return aio_server_interceptor()
