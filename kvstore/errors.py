"""Errors the store raises; the server maps each to its gRPC status (server/errors.py).

Every one is raised *before* the store changes anything, so a caller that gets one knows the
store is as it was.
"""

from __future__ import annotations


class KVStoreError(Exception):
    """Base class; `code` names the gRPC status code the server answers with."""

    code = "INTERNAL"


class InvalidArgument(KVStoreError):
    code = "INVALID_ARGUMENT"


class NotFound(KVStoreError):
    code = "NOT_FOUND"


class ResourceExhausted(KVStoreError):
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(KVStoreError):
    code = "FAILED_PRECONDITION"


class Unavailable(KVStoreError):
    code = "UNAVAILABLE"


class Unauthenticated(KVStoreError):
    """No bearer token, or one the server does not know (server/auth.py)."""

    code = "UNAUTHENTICATED"


class PermissionDenied(KVStoreError):
    """A known caller asking for another tenant's namespace, block or session, or for a service its
    role does not reach (server/auth.py)."""

    code = "PERMISSION_DENIED"


class Cancelled(KVStoreError):
    """The caller gave up (cancelled, or its deadline passed) before the call was committed; what
    it had done is taken back."""

    code = "CANCELLED"


def shorten(value: object, limit: int = 80) -> str:
    """`value` as it is echoed in a message: its repr, cut to `limit` characters with its length
    said. A message echoing a huge input whole would pass gRPC's metadata limit, which turns the
    status into RESOURCE_EXHAUSTED (and floods logs)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str | bytes) else ""
    return f"{text[:limit]}…{size}"
