"""The tenant the current call acts for, for checks that must run where the call acts.

The server's auth interceptor sets it for a token's call (kvstore/server/auth.py); threads started
with `asyncio.to_thread` inherit it, and the hint worker runs each hint in its caller's context. A
session, tool call or fan-out is looked up and acted on under the store's lock: checking its tenant
there, in the same critical section, is what keeps a call from reaching another tenant's session
that was opened (or closed and reopened under the same id) between an earlier check and the act.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar, Token

from kvstore.errors import PermissionDenied

_TENANT: ContextVar[str | None] = ContextVar("kvstore_tenant", default=None)


def acting_tenant() -> str | None:
    """The tenant a call is limited to; None: any (auth off, or an admin token)."""
    return _TENANT.get()


def act_as(tenant: str | None) -> Token[str | None]:
    return _TENANT.set(tenant)


def restore(token: Token[str | None]) -> None:
    # A streaming handler's generator closed at garbage collection runs in another context, where
    # there is nothing to undo (ValueError): its own request's context ends with it.
    with contextlib.suppress(ValueError):
        _TENANT.reset(token)


def check_tenant(owner: str, what: str) -> None:
    """PermissionDenied when the current call is limited to a tenant other than `owner`."""
    tenant = _TENANT.get()
    if tenant is not None and owner != tenant:
        raise PermissionDenied(f"{what} belongs to another tenant than this token's ({tenant!r})")
