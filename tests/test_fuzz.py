"""Fuzz every RPC of KVStore, AgentHints and Admin on the live server with random and garbage
fields (and bytes that are not protobuf at all): no call may answer UNKNOWN or INTERNAL, and a
call that is refused must leave the server as it was (Admin Stats, ListBlocks and ListSessions
before and after agree). Bounded: a fixed number of examples, well under two minutes.

Requests are drawn from each method's message descriptor, so a field added to the proto is
fuzzed without touching this file; values are biased towards what the server knows (its
namespaces, stored keys, open sessions, tier names, block-sized data) so that calls get past the
first check and reach the code behind it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from conftest import BLOCK, ThreadedServer, make_settings
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kvstore.sdk import Client

from kvstore.v1 import kvstore_pb2 as pb

SERVICES = ("KVStore", "AgentHints", "Admin")
METHODS: list[MethodDescriptor] = [
    m for name in SERVICES for m in pb.DESCRIPTOR.services_by_name[name].methods
]
EXAMPLES = 2000  # about 15 s here; the issue asks for at most a minute or two
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
}
# May wait out the call's deadline by design (WatchPlans: a stream of plans never ends).
LONG_WAITS = {"WaitReady", "WatchPlans"}

TOKENS = list(range(4 * 16))
# Known values come up more often than odd ones, so that many calls are accepted and go deep.
HUGE = "n" * 20_000  # echoed whole, it would pass gRPC's limit on a status message
NAMESPACES = ["t", "t", "t", "other", "", "nope", HUGE]
SESSIONS = ["s1", "s1", "s2", "s3", "", "x" * 300, HUGE]
TIERS = ["hbm", "dram", "disk", "", "tape", HUGE]
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def scalar(field: FieldDescriptor, keys: list[bytes]) -> st.SearchStrategy[Any]:
    """Values for one (non-repeated) field, biased by its name towards what the server knows."""
    name, kind = field.name, field.type
    if kind == FieldDescriptor.TYPE_STRING:
        known = {"namespace": NAMESPACES, "session": SESSIONS, "tier": TIERS}.get(name, ["", "a", HUGE])
        return st.one_of(*[st.sampled_from(known)] * 3, st.text(max_size=40))
    if kind == FieldDescriptor.TYPE_BYTES:
        if name == "data":
            return st.one_of(*[st.just(bytes(BLOCK))] * 3, st.binary(max_size=64))
        return st.one_of(*[st.sampled_from(keys)] * 3, st.binary(max_size=80))
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        width = 32 if kind == FieldDescriptor.TYPE_FLOAT else 64
        return st.one_of(st.sampled_from([0.0, 0.01, 1.0, 30.0, -1.0]), st.floats(width=width))
    if kind == FieldDescriptor.TYPE_ENUM:
        return st.integers(-3, 10)
    lo, hi = INT_RANGES[kind]
    edges = [v for v in (0, 1, 2, 3, BLOCK, lo, hi, lo + 1, hi - 1) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


def message(desc: Descriptor, keys: list[bytes], depth: int = 0) -> st.SearchStrategy[Message]:
    """A message of type `desc` with a random subset of its fields set to random values."""
    cls = GetMessageClass(desc)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            k, v = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            fields[field.name] = st.dictionaries(scalar(k, keys), scalar(v, keys), max_size=3)
            continue
        if field.message_type is not None:
            if depth >= 2:
                continue
            one = message(field.message_type, keys, depth + 1)
        else:
            one = scalar(field, keys)
        repeated = getattr(field, "is_repeated", None)
        repeated = field.label == FieldDescriptor.LABEL_REPEATED if repeated is None else repeated
        fields[field.name] = st.lists(one, max_size=6) if repeated else one
    if not fields:
        return st.builds(cls)
    chosen = st.fixed_dictionaries({}, optional=fields)
    return chosen.map(lambda kwargs: cls(**kwargs))


def requests_for(method: MethodDescriptor, keys: list[bytes], garbage: bool) -> st.SearchStrategy[Any]:
    """What one call sends: a message, or raw bytes that are not one; a list for a stream (whose
    last message is the garbage)."""
    good = message(method.input_type, keys)
    bad = st.binary(min_size=1, max_size=32).filter(_not_a_message)
    if not method.client_streaming:
        return bad if garbage else good
    many = st.lists(good, max_size=4)
    return st.tuples(many, bad).map(lambda t: [*t[0], t[1]]) if garbage else many


def _not_a_message(raw: bytes) -> bool:
    try:
        pb.PutRequest.FromString(raw)  # bytes that happen to parse are just another message
    except Exception:
        return True
    return False


def snapshot(channel: grpc.Channel) -> tuple:
    """What a refused call must not change (not counters of reads, times, or uptime)."""
    call = _caller(channel)
    stats = call("Admin", "Stats", pb.StatsRequest())
    blocks = call("Admin", "ListBlocks", pb.ListBlocksRequest(limit=10_000))
    sessions = call("Admin", "ListSessions", pb.ListSessionsRequest())
    return (
        stats.blocks,
        tuple((t.name, t.used_bytes, t.blocks, t.pinned_blocks) for t in stats.tiers),
        (stats.leases.write_leases, stats.leases.read_leases, stats.leases.reserved_bytes),
        sorted((b.namespace, b.key, b.tier, b.pins, tuple(b.sessions)) for b in blocks.blocks),
        sorted(
            (s.session, s.namespace, s.state, s.blocks, tuple(sorted(s.bytes_per_tier.items())), s.tool_name)
            for s in sessions.sessions
        ),
    )


def _caller(channel: grpc.Channel) -> Callable[..., Any]:
    def call(service: str, method: str, request: Message) -> Any:
        desc = pb.DESCRIPTOR.services_by_name[service].methods_by_name[method]
        rpc = channel.unary_unary(
            f"/{desc.containing_service.full_name}/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=GetMessageClass(desc.output_type).FromString,
        )
        return rpc(request, timeout=10)

    return call


def invoke(channel: grpc.Channel, method: MethodDescriptor, request: Any) -> tuple[grpc.StatusCode, str]:
    path = f"/{method.containing_service.full_name}/{method.name}"

    def serialize(m: Any) -> bytes:
        return m if isinstance(m, bytes) else m.SerializeToString()

    kind = (
        ("stream" if method.client_streaming else "unary")
        + "_"
        + ("stream" if method.server_streaming else "unary")
    )
    rpc = getattr(channel, kind)(path, request_serializer=serialize, response_deserializer=None)
    try:
        reply = rpc(iter(request) if method.client_streaming else request, timeout=2)
        if method.server_streaming:
            list(reply)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data = tmp_path_factory.mktemp("fuzz") / "data"
    # Leases outlive the run: none expires between two snapshots and reads as a state change.
    # The lru policy plans nothing from hints: under the agent policy, a move or a fan-out's pin
    # planned by an accepted hint could land between the snapshots around a refused call and read
    # as its doing. (Fan-out pins have their own test in test_hardening.)
    srv = ThreadedServer(make_settings(data, policy="lru", shared_memory={"lease_ttl_s": 3600}))
    with Client(srv.address) as kv:
        keys = kv.keys_for("t", TOKENS)
        kv.put("t", keys[:10], [os.urandom(BLOCK) for _ in keys[:10]], session="s1")
        kv.pin("t", keys[:2])
    channel = grpc.insecure_channel(srv.address)
    yield srv, channel, keys
    channel.close()
    srv.stop()


SEEN: Counter[tuple[str, str]] = Counter()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)
@given(data=st.data())
def test_every_rpc_survives_garbage(fuzzed: Any, data: st.DataObject) -> None:
    _, channel, keys = fuzzed
    method = data.draw(st.sampled_from(METHODS), label="method")
    garbage = data.draw(st.integers(0, 9), label="garbage") == 0  # one call in ten
    request = data.draw(requests_for(method, keys, garbage), label="request")
    before = snapshot(channel)
    code, details = invoke(channel, method, request)
    SEEN[(method.name, code.name)] += 1
    assert code in ALLOWED or (code == grpc.StatusCode.DEADLINE_EXCEEDED and method.name in LONG_WAITS), (
        f"{method.name} answered {code.name} ({details:.200}) for {request!r:.300}"
    )
    # A refusal is kvstore's own short message, not gRPC's complaint about an echo of the input.
    assert len(details) < 4096 and "exceeds hard limit" not in details, (method.name, details[:300])
    if code != grpc.StatusCode.OK:
        after = snapshot(channel)
        assert after == before, f"refused {method.name} ({code.name}) changed the server: {request!r:.300}"


def test_fuzz_reached_every_method() -> None:
    """Runs after the fuzz (file order): every method was called, and some calls were accepted."""
    if not SEEN:
        pytest.skip("the fuzz test did not run")
    called = {name for name, _ in SEEN}
    assert called == {m.name for m in METHODS}
    summary = ", ".join(f"{m}:{c}={n}" for (m, c), n in sorted(SEEN.items()))
    print(f"fuzz: {sum(SEEN.values())} calls; {summary}")
    assert sum(n for (_, code), n in SEEN.items() if code == "OK") > EXAMPLES // 20
