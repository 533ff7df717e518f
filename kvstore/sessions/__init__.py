"""Sessions: the session model and its transitions, the registry of sessions and block references,
the return times learned from how long sessions stay away, and (actions.py) the one place plans
are executed."""

from kvstore.sessions.model import Fanout, Prefetch, PrefetchStatus, Session, State, ToolCall
from kvstore.sessions.registry import SessionRegistry
from kvstore.sessions.returns import Away, AwayKind, ReturnTimes

__all__ = [
    "Away",
    "AwayKind",
    "Fanout",
    "Prefetch",
    "PrefetchStatus",
    "ReturnTimes",
    "Session",
    "SessionRegistry",
    "State",
    "ToolCall",
]
