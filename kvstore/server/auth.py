"""Who may do what: bearer tokens checked by a grpc.aio server interceptor.

Every call to a kvstore.v1 service must carry `authorization: Bearer <token>` naming a token of the
tokens file (kvstore/auth_tokens.py); gRPC health and reflection stay open (they reveal no tenant
data, and probes and grpcurl need them). A token names a tenant and a role:

- engine: the KVStore service (blocks in and out, the shared-memory data plane), plus Admin's
  read-only calls and Evict of named keys, all within its tenant;
- agent: AgentHints, KVStore's Lookup and DescribeNamespace (to compute and check the chain it
  binds; they return no block bytes), and Admin's read-only calls, within its tenant;
- admin: everything, across tenants.

Tenancy: a namespace belongs to the `tenant:` of its config; a block to its namespace; a session to
the tenant of the namespace it was opened in. A caller naming another tenant's namespace or lease
gets PERMISSION_DENIED here, before the service runs: both are fixed for their life (config; lease
ids are never reused), so a check on the event loop, without the store's lock, cannot go stale.
Sessions, tool calls and fan-outs are opened and closed by other threads meanwhile (a hint queued
earlier, a data-path call, idle expiry), so their tenant is checked where the call acts on them,
under the store's lock (kvstore.tenancy: the caller's tenant travels in its context). Names that do
not exist are passed on, so the service answers as it would without auth (NOT_FOUND, INVALID_ARGUMENT).

The services stay unaware of auth except for listings: `current_scope()` tells them which
namespaces the caller may see (ListBlocks must filter before its limit, not after).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextvars import ContextVar
from typing import Any

import grpc

from kvstore.auth_tokens import Identity, TokenTable
from kvstore.config import ConfigError, Settings
from kvstore.errors import KVStoreError, PermissionDenied
from kvstore.server.errors import status_of
from kvstore.shm.leases import Leases
from kvstore.store import Store
from kvstore.tenancy import act_as, restore
from kvstore.v1 import kvstore_pb2 as pb

log = logging.getLogger(__name__)

PACKAGE = "/kvstore.v1."
_ADMIN_READS = {"Admin/Stats", "Admin/ListBlocks", "Admin/ListSessions", "Admin/Health", "Admin/Route"}
# Which methods each role reaches, as "Service/Method"; "Service/*" is the whole service.
ROLE_METHODS: dict[str, frozenset[str]] = {
    "engine": frozenset({"KVStore/*", "Admin/Evict", *_ADMIN_READS}),
    "agent": frozenset({"AgentHints/*", "KVStore/Lookup", "KVStore/DescribeNamespace", *_ADMIN_READS}),
}
_SHM_METHODS = {"Reserve", "Commit", "CommitSlots", "Acquire", "Release"}

_CALLER: ContextVar[Identity | None] = ContextVar("kvstore_caller", default=None)


def current_caller() -> Identity | None:
    """The caller of the call being served; None when auth is off (anyone may do anything)."""
    return _CALLER.get()


def current_scope(store: Store) -> Collection[str] | None:
    """Namespaces the current caller may see; None: all of them (auth off, or an admin)."""
    caller = _CALLER.get()
    if caller is None or caller.admin:
        return None
    return {name for name, ns in store.namespaces.items() if ns.tenant == caller.tenant}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_exposure(settings: Settings) -> None:
    """Refuse to serve without tokens on an address other hosts can reach, unless told to."""
    auth = settings.auth
    if auth.tokens_file is None and not auth.allow_unauthenticated and not is_loopback(settings.host):
        raise ConfigError(
            f"refusing to listen on {settings.host}:{settings.port} without authentication: anyone who "
            "reaches it could read and delete every tenant's blocks. Give a tokens file "
            "(--auth-tokens PATH or auth.tokens_file), listen on 127.0.0.1 or a Unix socket, or "
            "set auth.allow_unauthenticated: true (--allow-unauthenticated) if the network is trusted."
        )


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class Guard:
    """The tenancy checks, one per request type. Each raises PermissionDenied or returns."""

    def __init__(self, store: Store, leases: Leases) -> None:
        self.store = store
        self.leases = leases

    # ---------------------------------------------------------------- the things that belong

    def namespace(self, caller: Identity, name: str) -> None:
        ns = self.store.namespaces.get(name)
        if ns is not None and ns.tenant != caller.tenant and not caller.admin:
            raise PermissionDenied(
                f"namespace {name!r} belongs to another tenant than this token's ({caller.tenant!r})"
            )

    def lease(self, caller: Identity, lease_id: int) -> None:
        # Lease ids count up from 1, so guessing another tenant's is easy: it must not end theirs.
        lease = None if caller.admin else self.leases._active.get(lease_id)
        ns = self.store.namespaces.get(lease.namespace) if lease is not None else None
        if ns is not None and ns.tenant != caller.tenant:
            raise PermissionDenied(
                f"lease {lease_id} belongs to another tenant than this token's ({caller.tenant!r})"
            )

    def shared_memory(self, caller: Identity) -> bool:
        """Whether the caller may map the segments. They hold every namespace's bytes of the shared
        tiers, so only an admin, or the tenant of every namespace, may (README "Security")."""
        return caller.admin or all(ns.tenant == caller.tenant for ns in self.store.namespaces.values())

    def data(self, caller: Identity, request: Any) -> None:
        """Any request with a namespace (its session is checked where it is used)."""
        if getattr(request, "namespace", ""):
            self.namespace(caller, request.namespace)

    # ---------------------------------------------------------------- per method

    def check(self, caller: Identity, method: str, request: Any) -> None:
        service, _, name = method.partition("/")
        if service == "KVStore" and name in _SHM_METHODS and not self.shared_memory(caller):
            raise PermissionDenied(
                "the shared-memory data plane serves a token only when every namespace is its "
                "tenant's; use Put and Get (the SDK does when AttachSharedMemory returns no segments)"
            )
        if name in ("Commit", "Release"):
            self.lease(caller, request.lease_id)
        elif name == "CommitSlots":
            for lease_id in {b.lease_id for b in request.blocks}:
                self.lease(caller, lease_id)
            self.data(caller, request)
        elif name == "Evict" and not caller.admin and not request.keys:
            raise PermissionDenied(
                "evicting bytes from a tier moves every tenant's blocks: only an admin token may; "
                "name the keys of your namespace instead"
            )
        elif name == "ListBlocks" and not request.namespace:
            pass  # filtered by the service through current_scope()
        else:
            self.data(caller, request)

    # ---------------------------------------------------------------- replies

    def _own(self, caller: Identity, namespace: str) -> bool:
        ns = self.store.namespaces.get(namespace)
        return caller.admin or (ns is not None and ns.tenant == caller.tenant)

    def list_sessions(self, caller: Identity, reply: pb.ListSessionsResponse) -> pb.ListSessionsResponse:
        if caller.admin:
            return reply
        return pb.ListSessionsResponse(sessions=[s for s in reply.sessions if self._own(caller, s.namespace)])

    def stats(self, caller: Identity, reply: pb.StatsResponse) -> pb.StatsResponse:
        """A tenant's view: its namespaces, and its blocks and bytes per tier (capacities are the
        server's). Hit, miss, move and lease counters are kept for the server as a whole, so they
        would count other tenants' traffic: they are left at 0."""
        if caller.admin:
            return reply
        own = [n for n in self.store.namespaces if self._own(caller, n)]
        per_tier: dict[str, list[int]] = {t.name: [0, 0, 0] for t in reply.tiers}
        with self.store.lock:
            for name in own:
                for e in self.store.index.entries(name):
                    row = per_tier.get(e.tier)
                    if row is not None:
                        row[0] += e.size
                        row[1] += 1
                        row[2] += e.pins > 0
        out = pb.StatsResponse(
            policy=reply.policy,
            uptime_s=reply.uptime_s,
            namespaces=[ns for ns in reply.namespaces if ns.name in own],
            blocks=sum(row[1] for row in per_tier.values()),
            tenants=[t for t in reply.tenants if t.tenant == caller.tenant],
        )
        for t in reply.tiers:
            used, blocks, pinned = per_tier[t.name]
            out.tiers.add(
                name=t.name,
                device=t.device,
                capacity_bytes=t.capacity_bytes,
                shared=t.shared,
                used_bytes=used,
                blocks=blocks,
                pinned_blocks=pinned,
            )
        return out


Behavior = Callable[..., Any]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: TokenTable, guard: Guard) -> None:
        self.tokens = tokens
        self.guard = guard

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        full = details.method or ""
        if handler is None or not full.startswith(PACKAGE):
            return handler  # health, reflection, and unknown methods (gRPC answers UNIMPLEMENTED)
        method = full[len(PACKAGE) :].replace("kvstore.v1.", "")
        token = bearer_token(details.invocation_metadata)
        if token is None:
            return _refusing(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "this server requires a token: send metadata 'authorization: Bearer <token>' "
                "(SDK token=..., kvctl --token, or env KVSTORE_TOKEN)",
            )
        caller = self.tokens.identify(token)
        if caller is None:
            return _refusing(handler, grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        if not self._reaches(caller, method):
            return _refusing(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"a token with role {caller.role!r} may not call {method}",
            )
        if method == "KVStore/AttachSharedMemory" and not self.guard.shared_memory(caller):
            # No segments: the SDK stays on Put/Get over gRPC, where every block is checked.
            return _replying(handler, pb.AttachSharedMemoryResponse())
        return self._wrap(handler, caller, method)

    @staticmethod
    def _reaches(caller: Identity, method: str) -> bool:
        if caller.admin:
            return True
        allowed = ROLE_METHODS.get(caller.role, frozenset())
        return method in allowed or f"{method.partition('/')[0]}/*" in allowed

    def _wrap(self, handler: grpc.RpcMethodHandler, caller: Identity, method: str) -> grpc.RpcMethodHandler:
        guard = self.guard
        tenant = None if caller.admin else caller.tenant  # what the store's checks hold it to
        post: Callable[[Any], Any] | None = None
        if method == "Admin/ListSessions":
            post = lambda reply: guard.list_sessions(caller, reply)  # noqa: E731
        elif method == "Admin/Stats":
            post = lambda reply: guard.stats(caller, reply)  # noqa: E731

        if handler.unary_unary is not None:
            inner: Behavior = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await _check(context, guard, caller, method, request)
                token, acting = _CALLER.set(caller), act_as(tenant)
                try:
                    reply = await inner(request, context)
                finally:
                    restore(acting)
                    _CALLER.reset(token)
                # stats takes the store's lock: off the loop, like the services' own work
                return reply if post is None or reply is None else await asyncio.to_thread(post, reply)

            return handler._replace(unary_unary=unary_unary)

        if handler.unary_stream is not None:
            inner_us: Behavior = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await _check(context, guard, caller, method, request)
                acting = act_as(tenant)
                try:
                    async for item in inner_us(request, context):
                        yield item
                finally:
                    restore(acting)

            return handler._replace(unary_stream=unary_stream)

        if handler.stream_unary is not None:
            inner_su: Behavior = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                async def checked() -> AsyncIterator[Any]:
                    # Each message of a Put names its own namespace; the service turns the
                    # PermissionDenied raised here into the status, and stores nothing.
                    seen: set[str] = set()
                    async for request in requests:
                        if request.namespace not in seen:
                            guard.data(caller, request)
                            seen.add(request.namespace)
                        yield request

                acting = act_as(tenant)
                try:
                    return await inner_su(checked(), context)
                finally:
                    restore(acting)

            return handler._replace(stream_unary=stream_unary)
        return handler  # no stream-stream methods in kvstore.v1


async def _check(
    context: grpc.aio.ServicerContext, guard: Guard, caller: Identity, method: str, request: Any
) -> None:
    try:
        guard.check(caller, method, request)
    except KVStoreError as exc:
        await context.abort(status_of(exc), str(exc))


def _refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """The same kind of handler, answering `code` without running the service."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    kind = next(
        k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream") if getattr(handler, k)
    )
    return handler._replace(**{kind: refuse})


def _replying(handler: grpc.RpcMethodHandler, reply: Any) -> grpc.RpcMethodHandler:
    async def answer(request: Any, context: grpc.aio.ServicerContext) -> Any:
        return reply

    return handler._replace(unary_unary=answer)
