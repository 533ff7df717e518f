from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SlotState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SLOT_WRITE: _ClassVar[SlotState]
    SLOT_STORED: _ClassVar[SlotState]
    SLOT_NO_ROOM: _ClassVar[SlotState]
SLOT_WRITE: SlotState
SLOT_STORED: SlotState
SLOT_NO_ROOM: SlotState

class PutRequest(_message.Message):
    __slots__ = ("namespace", "key", "parent", "data", "meta", "session", "pin")
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
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[bytes] = ..., parent: _Optional[bytes] = ..., data: _Optional[bytes] = ..., meta: _Optional[bytes] = ..., session: _Optional[str] = ..., pin: bool = ...) -> None: ...

class PutResponse(_message.Message):
    __slots__ = ("tiers", "bytes")
    TIERS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedScalarFieldContainer[str]
    bytes: int
    def __init__(self, tiers: _Optional[_Iterable[str]] = ..., bytes: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("namespace", "keys", "session", "stop_at_miss")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    STOP_AT_MISS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    session: str
    stop_at_miss: bool
    def __init__(self, namespace: _Optional[str] = ..., keys: _Optional[_Iterable[bytes]] = ..., session: _Optional[str] = ..., stop_at_miss: bool = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("key", "found", "data", "meta", "tier")
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
    def __init__(self, key: _Optional[bytes] = ..., found: bool = ..., data: _Optional[bytes] = ..., meta: _Optional[bytes] = ..., tier: _Optional[str] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("namespace", "keys", "tokens", "session")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    session: str
    def __init__(self, namespace: _Optional[str] = ..., keys: _Optional[_Iterable[bytes]] = ..., tokens: _Optional[_Iterable[int]] = ..., session: _Optional[str] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("prefix_blocks", "tiers", "blocks_per_tier", "keys")
    class BlocksPerTierEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PREFIX_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_PER_TIER_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    prefix_blocks: int
    tiers: _containers.RepeatedScalarFieldContainer[str]
    blocks_per_tier: _containers.ScalarMap[str, int]
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, prefix_blocks: _Optional[int] = ..., tiers: _Optional[_Iterable[str]] = ..., blocks_per_tier: _Optional[_Mapping[str, int]] = ..., keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("namespace", "keys")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, namespace: _Optional[str] = ..., keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class PinRequest(_message.Message):
    __slots__ = ("namespace", "keys")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, namespace: _Optional[str] = ..., keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class PinResponse(_message.Message):
    __slots__ = ("blocks",)
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    blocks: int
    def __init__(self, blocks: _Optional[int] = ...) -> None: ...

class DescribeNamespaceRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class NamespaceInfo(_message.Message):
    __slots__ = ("name", "model", "tenant", "adapter", "block_tokens", "block_bytes", "hash", "seed")
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
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., tenant: _Optional[str] = ..., adapter: _Optional[str] = ..., block_tokens: _Optional[int] = ..., block_bytes: _Optional[int] = ..., hash: _Optional[str] = ..., seed: _Optional[bytes] = ...) -> None: ...

class AttachSharedMemoryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SharedSegment(_message.Message):
    __slots__ = ("tier", "name", "size", "token")
    TIER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    tier: str
    name: str
    size: int
    token: bytes
    def __init__(self, tier: _Optional[str] = ..., name: _Optional[str] = ..., size: _Optional[int] = ..., token: _Optional[bytes] = ...) -> None: ...

class AttachSharedMemoryResponse(_message.Message):
    __slots__ = ("segments", "lease_ttl_s")
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    segments: _containers.RepeatedCompositeFieldContainer[SharedSegment]
    lease_ttl_s: float
    def __init__(self, segments: _Optional[_Iterable[_Union[SharedSegment, _Mapping]]] = ..., lease_ttl_s: _Optional[float] = ...) -> None: ...

class BlockHeader(_message.Message):
    __slots__ = ("key", "parent", "meta", "size")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    parent: bytes
    meta: bytes
    size: int
    def __init__(self, key: _Optional[bytes] = ..., parent: _Optional[bytes] = ..., meta: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class ReserveRequest(_message.Message):
    __slots__ = ("namespace", "blocks", "session", "pin", "count")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    blocks: _containers.RepeatedCompositeFieldContainer[BlockHeader]
    session: str
    pin: bool
    count: int
    def __init__(self, namespace: _Optional[str] = ..., blocks: _Optional[_Iterable[_Union[BlockHeader, _Mapping]]] = ..., session: _Optional[str] = ..., pin: bool = ..., count: _Optional[int] = ...) -> None: ...

class Slot(_message.Message):
    __slots__ = ("key", "state", "segment", "offset", "size")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    state: SlotState
    segment: int
    offset: int
    size: int
    def __init__(self, key: _Optional[bytes] = ..., state: _Optional[_Union[SlotState, str]] = ..., segment: _Optional[int] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class ReserveResponse(_message.Message):
    __slots__ = ("lease_id", "slots", "expires_in_s", "token")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    slots: _containers.RepeatedCompositeFieldContainer[Slot]
    expires_in_s: float
    token: bytes
    def __init__(self, lease_id: _Optional[int] = ..., slots: _Optional[_Iterable[_Union[Slot, _Mapping]]] = ..., expires_in_s: _Optional[float] = ..., token: _Optional[bytes] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    def __init__(self, lease_id: _Optional[int] = ...) -> None: ...

class SlotBlock(_message.Message):
    __slots__ = ("lease_id", "slot", "key", "parent", "meta")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    slot: int
    key: bytes
    parent: bytes
    meta: bytes
    def __init__(self, lease_id: _Optional[int] = ..., slot: _Optional[int] = ..., key: _Optional[bytes] = ..., parent: _Optional[bytes] = ..., meta: _Optional[bytes] = ...) -> None: ...

class CommitSlotsRequest(_message.Message):
    __slots__ = ("blocks", "session", "pin")
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    blocks: _containers.RepeatedCompositeFieldContainer[SlotBlock]
    session: str
    pin: bool
    def __init__(self, blocks: _Optional[_Iterable[_Union[SlotBlock, _Mapping]]] = ..., session: _Optional[str] = ..., pin: bool = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("tiers",)
    TIERS_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tiers: _Optional[_Iterable[str]] = ...) -> None: ...

class AcquireRequest(_message.Message):
    __slots__ = ("namespace", "keys", "session", "stop_at_miss")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    STOP_AT_MISS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    session: str
    stop_at_miss: bool
    def __init__(self, namespace: _Optional[str] = ..., keys: _Optional[_Iterable[bytes]] = ..., session: _Optional[str] = ..., stop_at_miss: bool = ...) -> None: ...

class LeasedBlock(_message.Message):
    __slots__ = ("key", "found", "meta", "tier", "segment", "offset", "size", "inline", "data", "checksum")
    KEY_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    META_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    found: bool
    meta: bytes
    tier: str
    segment: int
    offset: int
    size: int
    inline: bool
    data: bytes
    checksum: int
    def __init__(self, key: _Optional[bytes] = ..., found: bool = ..., meta: _Optional[bytes] = ..., tier: _Optional[str] = ..., segment: _Optional[int] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ..., inline: bool = ..., data: _Optional[bytes] = ..., checksum: _Optional[int] = ...) -> None: ...

class AcquireResponse(_message.Message):
    __slots__ = ("lease_id", "blocks", "expires_in_s", "token")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_S_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    lease_id: int
    blocks: _containers.RepeatedCompositeFieldContainer[LeasedBlock]
    expires_in_s: float
    token: bytes
    def __init__(self, lease_id: _Optional[int] = ..., blocks: _Optional[_Iterable[_Union[LeasedBlock, _Mapping]]] = ..., expires_in_s: _Optional[float] = ..., token: _Optional[bytes] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("valid",)
    VALID_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    def __init__(self, valid: bool = ...) -> None: ...

class WatchPlansRequest(_message.Message):
    __slots__ = ("namespace", "kinds")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class PlanEvent(_message.Message):
    __slots__ = ("kind", "session", "namespace", "due_in_s", "bytes", "dropped_before")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    DUE_IN_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    session: str
    namespace: str
    due_in_s: float
    bytes: int
    dropped_before: int
    def __init__(self, kind: _Optional[str] = ..., session: _Optional[str] = ..., namespace: _Optional[str] = ..., due_in_s: _Optional[float] = ..., bytes: _Optional[int] = ..., dropped_before: _Optional[int] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("session", "namespace")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    session: str
    namespace: str
    def __init__(self, session: _Optional[str] = ..., namespace: _Optional[str] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: str
    def __init__(self, session: _Optional[str] = ...) -> None: ...

class SessionReply(_message.Message):
    __slots__ = ("session", "state", "blocks")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    session: str
    state: str
    blocks: int
    def __init__(self, session: _Optional[str] = ..., state: _Optional[str] = ..., blocks: _Optional[int] = ...) -> None: ...

class BindChainRequest(_message.Message):
    __slots__ = ("session", "namespace", "keys")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    session: str
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, session: _Optional[str] = ..., namespace: _Optional[str] = ..., keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class BeginToolCallRequest(_message.Message):
    __slots__ = ("session", "tool_name", "expected_s", "call_id")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_S_FIELD_NUMBER: _ClassVar[int]
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    session: str
    tool_name: str
    expected_s: float
    call_id: str
    def __init__(self, session: _Optional[str] = ..., tool_name: _Optional[str] = ..., expected_s: _Optional[float] = ..., call_id: _Optional[str] = ...) -> None: ...

class EndToolCallRequest(_message.Message):
    __slots__ = ("call_id",)
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    def __init__(self, call_id: _Optional[str] = ...) -> None: ...

class ToolCallReply(_message.Message):
    __slots__ = ("call_id", "expected_s", "prefetch_in_s")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_S_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_IN_S_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    expected_s: float
    prefetch_in_s: float
    def __init__(self, call_id: _Optional[str] = ..., expected_s: _Optional[float] = ..., prefetch_in_s: _Optional[float] = ...) -> None: ...

class AnnounceFanoutRequest(_message.Message):
    __slots__ = ("session", "n", "ttl_s", "fanout_id")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    FANOUT_ID_FIELD_NUMBER: _ClassVar[int]
    session: str
    n: int
    ttl_s: float
    fanout_id: str
    def __init__(self, session: _Optional[str] = ..., n: _Optional[int] = ..., ttl_s: _Optional[float] = ..., fanout_id: _Optional[str] = ...) -> None: ...

class BranchDoneRequest(_message.Message):
    __slots__ = ("fanout_id",)
    FANOUT_ID_FIELD_NUMBER: _ClassVar[int]
    fanout_id: str
    def __init__(self, fanout_id: _Optional[str] = ...) -> None: ...

class FanoutReply(_message.Message):
    __slots__ = ("fanout_id", "branches_left")
    FANOUT_ID_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_LEFT_FIELD_NUMBER: _ClassVar[int]
    fanout_id: str
    branches_left: int
    def __init__(self, fanout_id: _Optional[str] = ..., branches_left: _Optional[int] = ...) -> None: ...

class WaitReadyRequest(_message.Message):
    __slots__ = ("session", "timeout_s")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    session: str
    timeout_s: float
    def __init__(self, session: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class WaitReadyReply(_message.Message):
    __slots__ = ("ready", "bytes_in_hbm", "bytes_elsewhere")
    READY_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_HBM_FIELD_NUMBER: _ClassVar[int]
    BYTES_ELSEWHERE_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    bytes_in_hbm: int
    bytes_elsewhere: int
    def __init__(self, ready: bool = ..., bytes_in_hbm: _Optional[int] = ..., bytes_elsewhere: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierStats(_message.Message):
    __slots__ = ("name", "used_bytes", "capacity_bytes", "blocks", "pinned_blocks", "hits", "moves_in", "moves_out", "drops", "device", "shared")
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
    SHARED_FIELD_NUMBER: _ClassVar[int]
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
    shared: bool
    def __init__(self, name: _Optional[str] = ..., used_bytes: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., blocks: _Optional[int] = ..., pinned_blocks: _Optional[int] = ..., hits: _Optional[int] = ..., moves_in: _Optional[int] = ..., moves_out: _Optional[int] = ..., drops: _Optional[int] = ..., device: _Optional[str] = ..., shared: bool = ...) -> None: ...

class LeaseStats(_message.Message):
    __slots__ = ("write_leases", "read_leases", "reserved_bytes")
    WRITE_LEASES_FIELD_NUMBER: _ClassVar[int]
    READ_LEASES_FIELD_NUMBER: _ClassVar[int]
    RESERVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    write_leases: int
    read_leases: int
    reserved_bytes: int
    def __init__(self, write_leases: _Optional[int] = ..., read_leases: _Optional[int] = ..., reserved_bytes: _Optional[int] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("tiers", "misses", "blocks", "policy", "namespaces", "uptime_s", "lookups", "lookup_hit_blocks", "leases", "remote", "tenants")
    TIERS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    LOOKUPS_FIELD_NUMBER: _ClassVar[int]
    LOOKUP_HIT_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LEASES_FIELD_NUMBER: _ClassVar[int]
    REMOTE_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tiers: _containers.RepeatedCompositeFieldContainer[TierStats]
    misses: int
    blocks: int
    policy: str
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceInfo]
    uptime_s: float
    lookups: int
    lookup_hit_blocks: int
    leases: LeaseStats
    remote: RemoteStats
    tenants: _containers.RepeatedCompositeFieldContainer[TenantStats]
    def __init__(self, tiers: _Optional[_Iterable[_Union[TierStats, _Mapping]]] = ..., misses: _Optional[int] = ..., blocks: _Optional[int] = ..., policy: _Optional[str] = ..., namespaces: _Optional[_Iterable[_Union[NamespaceInfo, _Mapping]]] = ..., uptime_s: _Optional[float] = ..., lookups: _Optional[int] = ..., lookup_hit_blocks: _Optional[int] = ..., leases: _Optional[_Union[LeaseStats, _Mapping]] = ..., remote: _Optional[_Union[RemoteStats, _Mapping]] = ..., tenants: _Optional[_Iterable[_Union[TenantStats, _Mapping]]] = ...) -> None: ...

class RemoteStats(_message.Message):
    __slots__ = ("up", "used_bytes", "capacity_bytes", "blocks", "hits", "misses", "corrupt", "writes", "written_bytes", "dropped_writes", "evictions", "queued", "episodes", "errors", "index_published", "index_republished", "index_overflows", "worker_id")
    UP_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    CORRUPT_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_BYTES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_WRITES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    EPISODES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    INDEX_PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    INDEX_REPUBLISHED_FIELD_NUMBER: _ClassVar[int]
    INDEX_OVERFLOWS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    up: bool
    used_bytes: int
    capacity_bytes: int
    blocks: int
    hits: int
    misses: int
    corrupt: int
    writes: int
    written_bytes: int
    dropped_writes: int
    evictions: int
    queued: int
    episodes: int
    errors: int
    index_published: int
    index_republished: int
    index_overflows: int
    worker_id: str
    def __init__(self, up: bool = ..., used_bytes: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., blocks: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., corrupt: _Optional[int] = ..., writes: _Optional[int] = ..., written_bytes: _Optional[int] = ..., dropped_writes: _Optional[int] = ..., evictions: _Optional[int] = ..., queued: _Optional[int] = ..., episodes: _Optional[int] = ..., errors: _Optional[int] = ..., index_published: _Optional[int] = ..., index_republished: _Optional[int] = ..., index_overflows: _Optional[int] = ..., worker_id: _Optional[str] = ...) -> None: ...

class TenantTierStats(_message.Message):
    __slots__ = ("tier", "used_bytes", "quota_bytes", "pinned_bytes")
    TIER_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    QUOTA_BYTES_FIELD_NUMBER: _ClassVar[int]
    PINNED_BYTES_FIELD_NUMBER: _ClassVar[int]
    tier: str
    used_bytes: int
    quota_bytes: int
    pinned_bytes: int
    def __init__(self, tier: _Optional[str] = ..., used_bytes: _Optional[int] = ..., quota_bytes: _Optional[int] = ..., pinned_bytes: _Optional[int] = ...) -> None: ...

class TenantStats(_message.Message):
    __slots__ = ("tenant", "tiers", "sessions", "max_sessions")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    tiers: _containers.RepeatedCompositeFieldContainer[TenantTierStats]
    sessions: int
    max_sessions: int
    def __init__(self, tenant: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[TenantTierStats, _Mapping]]] = ..., sessions: _Optional[int] = ..., max_sessions: _Optional[int] = ...) -> None: ...

class ListBlocksRequest(_message.Message):
    __slots__ = ("namespace", "tier", "limit")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    tier: str
    limit: int
    def __init__(self, namespace: _Optional[str] = ..., tier: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class BlockInfo(_message.Message):
    __slots__ = ("namespace", "key", "parent", "tier", "size", "pins", "idle_s", "sessions")
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
    def __init__(self, namespace: _Optional[str] = ..., key: _Optional[bytes] = ..., parent: _Optional[bytes] = ..., tier: _Optional[str] = ..., size: _Optional[int] = ..., pins: _Optional[int] = ..., idle_s: _Optional[float] = ..., sessions: _Optional[_Iterable[str]] = ...) -> None: ...

class ListBlocksResponse(_message.Message):
    __slots__ = ("blocks", "total")
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    blocks: _containers.RepeatedCompositeFieldContainer[BlockInfo]
    total: int
    def __init__(self, blocks: _Optional[_Iterable[_Union[BlockInfo, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class EvictRequest(_message.Message):
    __slots__ = ("namespace", "keys", "tier", "bytes", "drop")
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
    def __init__(self, namespace: _Optional[str] = ..., keys: _Optional[_Iterable[bytes]] = ..., tier: _Optional[str] = ..., bytes: _Optional[int] = ..., drop: bool = ...) -> None: ...

class EvictResponse(_message.Message):
    __slots__ = ("blocks", "bytes")
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    blocks: int
    bytes: int
    def __init__(self, blocks: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TierHealth(_message.Message):
    __slots__ = ("name", "ok", "detail")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    name: str
    ok: bool
    detail: str
    def __init__(self, name: _Optional[str] = ..., ok: bool = ..., detail: _Optional[str] = ...) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("status", "version", "tiers", "uptime_s")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    status: str
    version: str
    tiers: _containers.RepeatedCompositeFieldContainer[TierHealth]
    uptime_s: float
    def __init__(self, status: _Optional[str] = ..., version: _Optional[str] = ..., tiers: _Optional[_Iterable[_Union[TierHealth, _Mapping]]] = ..., uptime_s: _Optional[float] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("namespace", "keys", "tokens", "load_weight", "limit")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOAD_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    load_weight: float
    limit: int
    def __init__(self, namespace: _Optional[str] = ..., keys: _Optional[_Iterable[bytes]] = ..., tokens: _Optional[_Iterable[int]] = ..., load_weight: _Optional[float] = ..., limit: _Optional[int] = ...) -> None: ...

class RouteCandidate(_message.Message):
    __slots__ = ("worker", "address", "prefix_blocks", "load", "cost", "uncovered_tokens")
    class PrefixBlocksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    UNCOVERED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    worker: str
    address: str
    prefix_blocks: _containers.ScalarMap[str, int]
    load: float
    cost: float
    uncovered_tokens: int
    def __init__(self, worker: _Optional[str] = ..., address: _Optional[str] = ..., prefix_blocks: _Optional[_Mapping[str, int]] = ..., load: _Optional[float] = ..., cost: _Optional[float] = ..., uncovered_tokens: _Optional[int] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("candidates", "chain_blocks", "index_used", "keys")
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    CHAIN_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    INDEX_USED_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    candidates: _containers.RepeatedCompositeFieldContainer[RouteCandidate]
    chain_blocks: int
    index_used: bool
    keys: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, candidates: _Optional[_Iterable[_Union[RouteCandidate, _Mapping]]] = ..., chain_blocks: _Optional[int] = ..., index_used: bool = ..., keys: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ListSessionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PrefetchInfo(_message.Message):
    __slots__ = ("scheduled_in_s", "done_ago_s", "status", "bytes")
    SCHEDULED_IN_S_FIELD_NUMBER: _ClassVar[int]
    DONE_AGO_S_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    scheduled_in_s: float
    done_ago_s: float
    status: str
    bytes: int
    def __init__(self, scheduled_in_s: _Optional[float] = ..., done_ago_s: _Optional[float] = ..., status: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session", "namespace", "state", "tool_name", "in_tool_s", "expected_back_in_s", "bytes_per_tier", "prefetch", "blocks", "fanout_branches_left")
    class BytesPerTierEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SESSION_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOOL_NAME_FIELD_NUMBER: _ClassVar[int]
    IN_TOOL_S_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_BACK_IN_S_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_TIER_FIELD_NUMBER: _ClassVar[int]
    PREFETCH_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    FANOUT_BRANCHES_LEFT_FIELD_NUMBER: _ClassVar[int]
    session: str
    namespace: str
    state: str
    tool_name: str
    in_tool_s: float
    expected_back_in_s: float
    bytes_per_tier: _containers.ScalarMap[str, int]
    prefetch: PrefetchInfo
    blocks: int
    fanout_branches_left: int
    def __init__(self, session: _Optional[str] = ..., namespace: _Optional[str] = ..., state: _Optional[str] = ..., tool_name: _Optional[str] = ..., in_tool_s: _Optional[float] = ..., expected_back_in_s: _Optional[float] = ..., bytes_per_tier: _Optional[_Mapping[str, int]] = ..., prefetch: _Optional[_Union[PrefetchInfo, _Mapping]] = ..., blocks: _Optional[int] = ..., fanout_branches_left: _Optional[int] = ...) -> None: ...

class ListSessionsResponse(_message.Message):
    __slots__ = ("sessions",)
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    sessions: _containers.RepeatedCompositeFieldContainer[SessionInfo]
    def __init__(self, sessions: _Optional[_Iterable[_Union[SessionInfo, _Mapping]]] = ...) -> None: ...
