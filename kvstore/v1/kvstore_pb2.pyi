from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class PutRequest(_message.Message):
    __slots__ = ("data", "key", "meta", "namespace", "parent", "pin", "session")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: bytes
    parent: bytes
    data: bytes
    meta: bytes
    session: str
    pin: bool
    def __init__(self, namespace: str | None = ..., key: bytes | None = ..., parent: bytes | None = ..., data: bytes | None = ..., meta: bytes | None = ..., session: str | None = ..., pin: bool = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("bytes", "tiers")
    TIERS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedScalarFieldContainer[str]
    bytes: int
    def __init__(self, tiers: _Iterable[str] | None = ..., bytes: int | None = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("keys", "namespace", "session", "stop_at_miss")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    STOP_AT_MISS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    session: str
    stop_at_miss: bool
    def __init__(self, namespace: str | None = ..., keys: _Iterable[bytes] | None = ..., session: str | None = ..., stop_at_miss: bool = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("data", "found", "key", "meta", "tier")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    found: bool
    data: bytes
    meta: bytes
    tier: str
    def __init__(self, key: bytes | None = ..., found: bool = ..., data: bytes | None = ..., meta: bytes | None = ..., tier: str | None = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("keys", "namespace", "session", "tokens")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    session: str
    def __init__(self, namespace: str | None = ..., keys: _Iterable[bytes] | None = ..., tokens: _Iterable[int] | None = ..., session: str | None = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("blocks_per_tier", "keys", "prefix_blocks", "tiers")
    class BlocksPerTierEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: str | None = ..., value: int | None = ...) -> None: ...
    PREFIX_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_PER_TIER_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    prefix_blocks: int
    tiers: _containers.RepeatedScalarFieldContainer[str]
    blocks_per_tier: _containers.ScalarMap[str, int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, prefix_blocks: int | None = ..., tiers: _Iterable[str] | None = ..., blocks_per_tier: _Mapping[str, int] | None = ..., keys: _Iterable[bytes] | None = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("keys", "namespace")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, namespace: str | None = ..., keys: _Iterable[bytes] | None = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: int | None = ...) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ("keys", "namespace")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, namespace: str | None = ..., keys: _Iterable[bytes] | None = ...) -> None: ...

class PinResponse(_message.Message):
    __slots__ = ("blocks",)
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    blocks: int
    def __init__(self, blocks: int | None = ...) -> None: ...

class DescribeNamespaceRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: str | None = ...) -> None: ...

class NamespaceInfo(_message.Message):
    __slots__ = ("adapter", "block_bytes", "block_tokens", "hash", "model", "name", "seed", "tenant")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_BYTES_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    tenant: str
    adapter: str
    block_tokens: int
    block_bytes: int
    hash: str
    seed: bytes
    def __init__(self, name: str | None = ..., model: str | None = ..., tenant: str | None = ..., adapter: str | None = ..., block_tokens: int | None = ..., block_bytes: int | None = ..., hash: str | None = ..., seed: bytes | None = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("namespace", "session")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    session: str
    namespace: str
    def __init__(self, session: str | None = ..., namespace: str | None = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: str
    def __init__(self, session: str | None = ...) -> None: ...

class SessionReply(_message.Message):
    __slots__ = ("session", "state")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    session: str
    state: str
    def __init__(self, session: str | None = ..., state: str | None = ...) -> None: ...

class BindChainRequest(_message.Message):
    __slots__ = ("keys", "namespace", "session")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    session: str
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, session: str | None = ..., namespace: str | None = ..., keys: _Iterable[bytes] | None = ...) -> None: ...

class BeginToolCallRequest(_message.Message):
    __slots__ = ("call_id", "expected_s", "session", "tool_name")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_S_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    session: str
    tool_name: str
    expected_s: float
    call_id: str
    def __init__(self, session: str | None = ..., tool_name: str | None = ..., expected_s: float | None = ..., call_id: str | None = ...) -> None: ...

class EndToolCallRequest(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: str | None = ...) -> None: ...

class ToolCallReply(_message.Message):
    __slots__ = ("call_id", "expected_s", "prefetch_in_s")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_S_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_IN_S_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    expected_s: float
    prefetch_in_s: float
    def __init__(self, call_id: str | None = ..., expected_s: float | None = ..., prefetch_in_s: float | None = ...) -> None: ...

class AnnounceFanoutRequest(_message.Message):
    __slots__ = ("fanout_id", "n", "session", "ttl_s")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    FANOUT_ID_FIELD_NUMBER: _ClassVar[int]
    session: str
    n: int
    ttl_s: float
    fanout_id: str
    def __init__(self, session: str | None = ..., n: int | None = ..., ttl_s: float | None = ..., fanout_id: str | None = ...) -> None: ...

class BranchDoneRequest(_message.Message):
    __slots__ = ("fanout_id",)
    FANOUT_ID_FIELD_NUMBER: _ClassVar[int]
    fanout_id: str
    def __init__(self, fanout_id: str | None = ...) -> None: ...

class FanoutReply(_message.Message):
    __slots__ = ("branches_left", "fanout_id")
    FANOUT_ID_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_LEFT_FIELD_NUMBER: _ClassVar[int]
    fanout_id: str
    branches_left: int
    def __init__(self, fanout_id: str | None = ..., branches_left: int | None = ...) -> None: ...

class WaitReadyRequest(_message.Message):
    __slots__ = ("session", "timeout_s")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    session: str
    timeout_s: float
    def __init__(self, session: str | None = ..., timeout_s: float | None = ...) -> None: ...

class WaitReadyReply(_message.Message):
    __slots__ = ("bytes_elsewhere", "bytes_in_hbm", "ready")
    READY_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_HBM_FIELD_NUMBER: _ClassVar[int]
    BYTES_ELSEWHERE_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    bytes_in_hbm: int
    bytes_elsewhere: int
    def __init__(self, ready: bool = ..., bytes_in_hbm: int | None = ..., bytes_elsewhere: int | None = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierStats(_message.Message):
    __slots__ = ("blocks", "capacity_bytes", "device", "drops", "hits", "moves_in", "moves_out", "name", "pinned_blocks", "used_bytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    PINNED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MOVES_IN_FIELD_NUMBER: _ClassVar[int]
    MOVES_OUT_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    name: str
    used_bytes: int
    capacity_bytes: int
    blocks: int
    pinned_blocks: int
    hits: int
    moves_in: int
    moves_out: int
    drops: int
    device: str
    def __init__(self, name: str | None = ..., used_bytes: int | None = ..., capacity_bytes: int | None = ..., blocks: int | None = ..., pinned_blocks: int | None = ..., hits: int | None = ..., moves_in: int | None = ..., moves_out: int | None = ..., drops: int | None = ..., device: str | None = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("blocks", "lookup_hit_blocks", "lookups", "misses", "namespaces", "policy", "tiers", "uptime_s")
    TIERS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_HIT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedCompositeFieldContainer[TierStats]
    misses: int
    blocks: int
    policy: str
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceInfo]
    uptime_s: float
    lookups: int
    lookup_hit_blocks: int
    def __init__(self, tiers: _Iterable[TierStats | _Mapping] | None = ..., misses: int | None = ..., blocks: int | None = ..., policy: str | None = ..., namespaces: _Iterable[NamespaceInfo | _Mapping] | None = ..., uptime_s: float | None = ..., lookups: int | None = ..., lookup_hit_blocks: int | None = ...) -> None: ...

class ListBlocksRequest(_message.Message):
    __slots__ = ("limit", "namespace", "tier")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    tier: str
    limit: int
    def __init__(self, namespace: str | None = ..., tier: str | None = ..., limit: int | None = ...) -> None: ...

class BlockInfo(_message.Message):
    __slots__ = ("idle_s", "key", "namespace", "parent", "pins", "sessions", "size", "tier")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    IDLE_S_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    key: bytes
    parent: bytes
    tier: str
    size: int
    pins: int
    idle_s: float
    sessions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: str | None = ..., key: bytes | None = ..., parent: bytes | None = ..., tier: str | None = ..., size: int | None = ..., pins: int | None = ..., idle_s: float | None = ..., sessions: _Iterable[str] | None = ...) -> None: ...

class ListBlocksResponse(_message.Message):
    __slots__ = ("blocks", "total")
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    blocks: _containers.RepeatedCompositeFieldContainer[BlockInfo]
    total: int
    def __init__(self, blocks: _Iterable[BlockInfo | _Mapping] | None = ..., total: int | None = ...) -> None: ...

class EvictRequest(_message.Message):
    __slots__ = ("bytes", "drop", "keys", "namespace", "tier")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DROP_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    tier: str
    bytes: int
    drop: bool
    def __init__(self, namespace: str | None = ..., keys: _Iterable[bytes] | None = ..., tier: str | None = ..., bytes: int | None = ..., drop: bool = ...) -> None: ...

class EvictResponse(_message.Message):
    __slots__ = ("blocks", "bytes")
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    blocks: int
    bytes: int
    def __init__(self, blocks: int | None = ..., bytes: int | None = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierHealth(_message.Message):
    __slots__ = ("detail", "name", "ok")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    detail: str
    def __init__(self, name: str | None = ..., ok: bool = ..., detail: str | None = ...) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("status", "tiers", "uptime_s", "version")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    status: str
    version: str
    tiers: _containers.RepeatedCompositeFieldContainer[TierHealth]
    uptime_s: float
    def __init__(self, status: str | None = ..., version: str | None = ..., tiers: _Iterable[TierHealth | _Mapping] | None = ..., uptime_s: float | None = ...) -> None: ...
