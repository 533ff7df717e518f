"""kvstore SDK: clients for engines and agent frameworks. Importing it does not import torch."""

from kvstore.sdk.agent import AgentSession, AsyncAgentSession, Fanout, current_session, tool
from kvstore.sdk.async_client import AsyncClient
from kvstore.sdk.client import Client
from kvstore.sdk.core import (
    DEFAULT_ADDRESS,
    Candidate,
    LookupResult,
    NamespaceInfo,
    PlanEvent,
    RouteResult,
    StoredBlock,
)
from kvstore.sdk.pool import SessionPool
from kvstore.sdk.sender import HintSender

from kvstore.errors import (
    FailedPrecondition,
    InvalidArgument,
    KVStoreError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "AgentSession",
    "AsyncAgentSession",
    "AsyncClient",
    "Candidate",
    "Client",
    "FailedPrecondition",
    "Fanout",
    "HintSender",
    "InvalidArgument",
    "KVStoreError",
    "LookupResult",
    "NamespaceInfo",
    "NotFound",
    "PlanEvent",
    "ResourceExhausted",
    "RouteResult",
    "SessionPool",
    "StoredBlock",
    "Unavailable",
    "current_session",
    "tool",
]
