"""LMCache remote-storage plugin: LMCache stores and loads its KV chunks through a running kvstore.

Why this interface: LMCache 0.5.6's in-process engine (what vLLM's `LMCacheConnectorV1` runs) loads
`RemoteConnector` plugins (`remote_storage_plugins`). Its multi-process server (what vLLM's
`LMCacheMPConnector` talks to) loads L2 adapters instead; see README "LMCache" for why that one is
not covered.

- Keys: each chunk key (`CacheEngineKey.to_string()`: model, world, worker, chunk hash, dtype,
  `lmcache.tag.*` tags) becomes an opaque 32-byte kvstore key; a batched put sends the chunks of a
  request as a chain, each with its parent.
- Sessions: LMCache hands every request config whose name starts with `lmcache.` (from the vLLM
  request's `kv_transfer_params`) to the storage backends inside each chunk key, but only the
  `lmcache.tag.*` ones enter the key's identity. The session is read from a non-tag config
  (`lmcache.kvstore.session_id` by default), so one chunk stored under two sessions is one entry,
  referenced by both; a `lmcache.tag.session_id` tag would split the cache per session (still read,
  with a warning, for configs written for the old plugin).
- Bytes: kvstore stores blocks of exactly the namespace's `block_bytes`. A full chunk is that size;
  a partial last chunk (or a namespace with bigger blocks, warned about at start) is padded.
  LMCache's own metadata (length, shapes, dtypes, format) travels as the block's meta.
- Data path next to the server: LMCache's store buffers are kvstore slots reserved ahead of time
  (slot_buffers.py), so LMCache's device-to-host copy writes each chunk in place and a batched put
  is one CommitSlots RPC (no copy); a buffer from LMCache's own pool (a partial chunk, no room)
  goes as one Reserve, one copy into its slot, one Commit. A batched get is one Acquire and hands
  LMCache its chunks as views of kvstore's slots (no copy; see slots.py), the lease released once
  LMCache freed them.
- Failure: a namespace that does not exist stops LMCache at start with the config to add. If kvstore
  is down or slow, every call is bounded by a timeout and turns into a miss (or a dropped put) with a
  log line; LMCache keeps serving.

Config (LMCache `extra_config`, plugin name `kvstore`):
    remote_storage_plugins: ["kvstore"]
    extra_config:
      remote_storage_plugin.kvstore.module_path: kvstore.integrations.lmcache.connector
      remote_storage_plugin.kvstore.class_name: KVStoreConnector
      remote_storage_plugin.kvstore.address: 127.0.0.1:50551
      remote_storage_plugin.kvstore.namespace: lmcache
      remote_storage_plugin.kvstore.timeout_s: 1.0
      remote_storage_plugin.kvstore.session_config: lmcache.kvstore.session_id
      remote_storage_plugin.kvstore.store_buffers_mib: 256  # kvstore slots kept ready as LMCache's store
                                                            # buffers (0: LMCache's own, one copy more)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from itertools import groupby
from typing import Any

import numpy as np
from kvstore.integrations.lmcache.slot_buffers import SlotBuffers
from kvstore.integrations.lmcache.slots import SlotLeases
from kvstore.sdk import Client
from kvstore.sdk.base import Rpc
from kvstore.sdk.core import DEFAULT_ADDRESS
from lmcache.utils import CacheEngineKey
from lmcache.v1.exceptions import IrrecoverableException
from lmcache.v1.memory_management import MemoryObj
from lmcache.v1.protocol import RemoteMetadata
from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector

from kvstore.errors import KVStoreError, NotFound
from kvstore.hashing import opaque_key
from kvstore.v1 import kvstore_pb2 as pb

log = logging.getLogger("kvstore.integrations.lmcache")

# The request config that names the agent session: an `lmcache.` name (LMCache forwards only those
# from kv_transfer_params) that is not an `lmcache.tag.` one (those split the chunk key).
SESSION_CONFIG = "lmcache.kvstore.session_id"
LEGACY_SESSION_TAG = "session_id"


def _on(value: Any) -> bool:
    return str(value).lower() not in ("false", "0", "no", "off")


def _sole_store(config: Any, plugin_name: str) -> bool:
    """Whether this plugin is LMCache's only storage and a buffer reaches it as allocated: then
    LMCache's store buffers may be kvstore slots, since nothing else keeps or reads them later."""
    others = ("local_cpu", "local_disk", "gds_path", "maru_path", "enable_p2p", "enable_pd", "remote_url")
    return (
        config is not None
        and not any(getattr(config, name, None) for name in others)
        and list(getattr(config, "remote_storage_plugins", None) or []) == [plugin_name]
        and getattr(config, "remote_serde", "naive") == "naive"
    )


class KVStoreConnector(RemoteConnector):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        local_cpu_backend: Any,
        config: Any,
        plugin_name: str = "kvstore",
    ) -> None:
        super().__init__(local_cpu_backend.config, local_cpu_backend.metadata)
        extra = (config.extra_config if config is not None else None) or {}

        def setting(name: str, default: Any) -> Any:
            return extra.get(f"remote_storage_plugin.{plugin_name}.{name}", default)

        self.loop = loop
        self.local_cpu_backend = local_cpu_backend
        self.address = str(setting("address", DEFAULT_ADDRESS))
        self.namespace = str(setting("namespace", "lmcache"))
        self.session_config = str(setting("session_config", SESSION_CONFIG))
        self.session_tag = str(setting("session_tag", LEGACY_SESSION_TAG))
        shared = _on(setting("shared_memory", "true"))
        self.client = Client(
            self.address,
            timeout=float(setting("timeout_s", 1.0)),
            shared_memory=shared,
        )
        # Slot views only when LMCache frees what a get returns soon: with its own CPU cache on
        # (`local_cpu`), it keeps remote chunks indefinitely, longer than a read lease lives.
        keeps_gets = bool(getattr(local_cpu_backend, "use_hot", False))
        zero_copy = _on(setting("zero_copy", "true")) and not keeps_gets
        self.leases = SlotLeases(self.client) if zero_copy else None
        self._block_bytes: int | None = None
        self._metas: dict[tuple[Any, ...], bytes] = {}
        self._warned_tag = False
        self._healthy = True
        # LMCache's own allocator: buffers for chunks read over gRPC or copied out of a slot.
        self._lmcache_allocate = local_cpu_backend.allocate
        self._check_namespace()
        self.buffers: SlotBuffers | None = None
        pool = int(float(setting("store_buffers_mib", 256)) * 2**20) // self.full_chunk_size_bytes
        slot_chunks = shared and zero_copy and self._block_bytes == self.full_chunk_size_bytes
        if pool > 0 and slot_chunks and _sole_store(config, plugin_name):
            self.buffers = SlotBuffers(
                self.client,
                self.namespace,
                self.full_chunk_size_bytes,
                pool,
                local_cpu_backend.allocate,
                local_cpu_backend.batched_allocate,
            )
            # LMCache's StorageManager allocates every store buffer through its LocalCPUBackend (it
            # has no allocator hook for a remote backend): ours stand in on that instance.
            local_cpu_backend.allocate = self.buffers.allocate
            local_cpu_backend.batched_allocate = self.buffers.batched_allocate

    # ------------------------------------------------------------------ start

    def _check_namespace(self) -> None:
        """Fail LMCache's start on a namespace that does not exist (every put would be refused and
        every get miss, silently); a kvstore that is not up yet is checked again on first use."""
        try:
            self._block_size()
        except NotFound as exc:
            self.client.close()
            if self.leases is not None:
                self.leases.close()
            raise IrrecoverableException(
                f"kvstore at {self.address} has no namespace {self.namespace!r} ({exc}). Add it to the "
                f"kvstore config: namespaces: [{{name: {self.namespace}, model: <model>, block_tokens: "
                f"<LMCache chunk_size>, block_bytes: {self.full_chunk_size_bytes}}}], or set "
                f"remote_storage_plugin.kvstore.namespace to one that exists"
            ) from exc
        except KVStoreError as exc:
            self._failed("namespace check", exc)

    # ------------------------------------------------------------------ helpers

    def _key(self, key: CacheEngineKey) -> bytes:
        return opaque_key(key.to_string())

    def _session(self, key: CacheEngineKey) -> str | None:
        session = (key.request_configs or {}).get(self.session_config)
        if session is not None:
            return str(session)
        tagged = dict(key.tags or ()).get(self.session_tag)
        if tagged is not None and not self._warned_tag:
            self._warned_tag = True
            log.warning(
                "a request carries the LMCache tag lmcache.tag.%s: tags are part of LMCache's chunk key, so "
                "each session stores its own copy of shared prefixes. Send the session as %s instead",
                self.session_tag,
                self.session_config,
            )
        return None if tagged is None else str(tagged)

    def _by_session(self, keys: list[CacheEngineKey]) -> Iterator[tuple[str | None, list[int]]]:
        """Positions of `keys` in runs of one session (one run per batch in practice: LMCache
        batches the chunks of one request)."""
        for session, run in groupby(range(len(keys)), key=lambda i: self._session(keys[i])):
            yield session, list(run)

    def _failed(self, what: str, exc: Exception) -> None:
        if self._healthy:
            log.warning(
                "kvstore at %s: %s failed, LMCache carries on with misses: %s",
                self.address,
                what,
                exc,
            )
        self._healthy = False

    def _ok(self) -> None:
        if not self._healthy:
            log.info("kvstore at %s reachable again", self.address)
        self._healthy = True

    def _block_size(self) -> int:
        """The namespace's block size, checked against LMCache's chunk size once."""
        if self._block_bytes is None:
            info = self.client.namespace(self.namespace)
            chunk = self.full_chunk_size_bytes
            if info.block_bytes < chunk:
                raise KVStoreError(
                    f"kvstore namespace {self.namespace!r} stores {info.block_bytes}-byte blocks but LMCache "
                    f"chunks are {chunk} bytes; set block_bytes: {chunk} for it in the kvstore config"
                )
            if info.block_bytes > chunk:
                log.warning(
                    "kvstore namespace %r stores %d-byte blocks but LMCache chunks are %d bytes: every chunk "
                    "is padded (%.1fx the memory) and copied on get; set block_bytes: %d for it",
                    self.namespace,
                    info.block_bytes,
                    chunk,
                    info.block_bytes / chunk,
                    chunk,
                )
            self._block_bytes = info.block_bytes
        return self._block_bytes

    def _meta(self, length: int, shapes: Any, dtypes: Any, fmt: Any) -> bytes:
        """LMCache's metadata of a chunk (the same for every full chunk: built once per layout)."""
        layout = (length, *shapes, *dtypes, fmt)
        meta = self._metas.get(layout)
        if meta is None:
            meta = self._metas[layout] = bytes(
                RemoteMetadata(length, list(shapes), list(dtypes), fmt).serialize()
            )
        return meta

    def _encode(self, memory_obj: MemoryObj) -> tuple[Any, bytes]:
        buffer = memory_obj.byte_array
        pad = self._block_size() - len(buffer)
        # A full chunk goes as a view of LMCache's buffer: one copy, straight into the slot.
        data = bytes(buffer) + bytes(pad) if pad else np.frombuffer(buffer, dtype=np.uint8)
        meta = self._meta(
            len(buffer), memory_obj.get_shapes(), memory_obj.get_dtypes(), memory_obj.get_memory_format()
        )
        return data, meta

    def _decode(self, data: Any, meta: bytes) -> MemoryObj | None:
        """A chunk copied into a fresh LMCache buffer (gRPC, a partial chunk, padded blocks)."""
        md = RemoteMetadata.deserialize(bytearray(meta))
        memory_obj = self._lmcache_allocate(md.shapes, md.dtypes, md.fmt)
        if memory_obj is None:
            log.debug("LMCache has no CPU buffer free for a chunk from kvstore")
            return None
        # byte_array is a '<B' memoryview, which refuses slice assignment from bytes: copy via numpy
        dst = np.frombuffer(memory_obj.byte_array, dtype=np.uint8)
        dst[: md.length] = np.frombuffer(data, dtype=np.uint8, count=md.length)
        return self.reshape_partial_chunk(memory_obj, md.length)

    # ------------------------------------------------------------------ sync bodies

    def exists_sync(self, key: CacheEngineKey) -> bool:
        return self.batched_contains([key]) == 1

    def batched_contains(self, keys: list[CacheEngineKey]) -> int:
        """How many leading keys are stored."""
        try:
            found = self.client.lookup(self.namespace, keys=[self._key(k) for k in keys]).prefix_blocks
        except (KVStoreError, ValueError) as exc:
            self._failed("lookup", exc)
            return 0
        self._ok()
        return found

    def support_batched_contains(self) -> bool:
        return True

    def _get_many(self, keys: list[CacheEngineKey]) -> list[MemoryObj | None]:
        out: list[MemoryObj | None] = [None] * len(keys)
        try:
            for session, run in self._by_session(keys):
                got = self._get_run([self._key(keys[i]) for i in run], session)
                for i, obj in zip(run, got, strict=True):
                    out[i] = obj
        except (KVStoreError, ValueError) as exc:
            self._failed("get", exc)
            for obj in out:
                if obj is not None:
                    obj.ref_count_down()
            return [None] * len(keys)
        self._ok()
        return out

    def _get_run(self, keys: list[bytes], session: str | None) -> list[MemoryObj | None]:
        if self.leases is not None and self._block_size() == self.full_chunk_size_bytes:
            segments = self.leases.segments()
            if segments is not None:
                reply = self.leases.acquire(segments, self.namespace, keys, session)
                if reply is not None:
                    return self._from_lease(segments, reply, len(keys))
        stored = self.client.fetch(self.namespace, keys, session=session)
        return [self._decode(b.data, b.meta) if b is not None else None for b in stored]

    def _from_lease(self, segments: Any, reply: Any, n: int) -> list[MemoryObj | None]:
        """Full chunks in shared memory become slot views (released with the lease once LMCache
        freed them all); the rest (partial chunks, inline bytes from disk) are copied now."""
        assert self.leases is not None
        out: list[MemoryObj | None] = [None] * n
        viewed: list[int] = []
        views: list[memoryview] = []
        layout: tuple[Any, Any, Any] | None = None  # of the viewed chunks: one per batch
        try:
            for i, b in enumerate(reply.blocks):
                if not b.found:
                    continue
                md = RemoteMetadata.deserialize(bytearray(b.meta))
                src = memoryview(b.data) if b.inline else segments.view(b.segment, b.offset, b.size)
                if b.inline or md.length != self.full_chunk_size_bytes:
                    out[i] = self._decode(src, b.meta)
                    continue
                if layout is not None and (md.shapes, md.dtypes, md.fmt) != layout:
                    out[i] = self._decode(src, b.meta)
                    continue
                layout = (md.shapes, md.dtypes, md.fmt)
                viewed.append(i)
                views.append(src)
        except BaseException:
            self.leases.release(reply.lease_id)
            raise
        if layout is None:
            self.leases.release(reply.lease_id)
            return out
        shapes, dtypes, fmt = layout
        for i, obj in zip(viewed, self.leases.wrap(reply.lease_id, views, shapes, dtypes, fmt), strict=True):
            out[i] = obj
        return out

    def _put_many(self, keys: list[CacheEngineKey], memory_objs: list[MemoryObj]) -> None:
        if not keys:
            return
        try:
            for session, run in self._by_session(keys):
                self._put_run([self._key(keys[i]) for i in run], [memory_objs[i] for i in run], session)
        except (KVStoreError, ValueError) as exc:
            self._failed("put", exc)
            return
        self._ok()

    def _put_run(self, keys: list[bytes], objs: list[MemoryObj], session: str | None) -> None:
        """One chain: chunks written into our slots are committed in one CommitSlots; the others
        (LMCache's own buffers) are copied in by a put, each stretch with its parent."""
        written = self.buffers.written(objs) if self.buffers is not None else [None] * len(objs)
        in_slots = [
            pb.SlotBlock(
                lease_id=w.lease_id,
                slot=w.slot,
                key=keys[i],
                parent=keys[i - 1] if i else b"",
                meta=self._meta(self.full_chunk_size_bytes, w.layout.shapes, w.layout.dtypes, w.layout.fmt),
            )
            for i, w in enumerate(written)
            if w is not None
        ]
        if in_slots:
            assert self.buffers is not None
            request = pb.CommitSlotsRequest(blocks=in_slots, session=session or "")
            settled = [obj for obj, w in zip(objs, written, strict=True) if w is not None]
            try:
                self.client._run(_commit_slots(request))
            except BaseException:
                self.buffers.settled(settled, committed=False)
                raise
            self.buffers.settled(settled, committed=True)
        for copied, stretch in groupby(range(len(objs)), key=lambda i: written[i] is None):
            if not copied:
                continue
            at = list(stretch)
            encoded = [self._encode(objs[i]) for i in at]
            self.client.put(
                self.namespace,
                [keys[i] for i in at],
                [d for d, _ in encoded],
                parent=keys[at[0] - 1] if at[0] else None,
                metas=[m for _, m in encoded],
                session=session,
            )

    # ------------------------------------------------------------------ RemoteConnector

    async def exists(self, key: CacheEngineKey) -> bool:
        return await self.loop.run_in_executor(None, self.exists_sync, key)

    async def get(self, key: CacheEngineKey) -> MemoryObj | None:
        return (await self.loop.run_in_executor(None, self._get_many, [key]))[0]

    async def put(self, key: CacheEngineKey, memory_obj: MemoryObj) -> None:
        await self.loop.run_in_executor(None, self._put_many, [key], [memory_obj])

    def support_batched_get(self) -> bool:
        return True

    async def batched_get(self, keys: list[CacheEngineKey]) -> list[MemoryObj | None]:
        if self.leases is not None:
            # A zero-copy get is one Acquire RPC and no bulk copy: run it on LMCache's loop rather
            # than hop to an executor thread and back (each hop waits on the GIL on a busy host).
            # Bounded by timeout_s like every call, which is what a dead kvstore costs the loop.
            return self._get_many(list(keys))
        return await self.loop.run_in_executor(None, self._get_many, list(keys))

    def support_batched_put(self) -> bool:
        return True

    async def batched_put(self, keys: list[CacheEngineKey], memory_objs: list[MemoryObj]) -> None:
        if self.buffers is not None and all(self.buffers.written(memory_objs)):
            # Chunks already in our slots: the put is one CommitSlots RPC and no copy, run on
            # LMCache's loop like a zero-copy get (bounded by timeout_s) rather than via a thread.
            self._put_many(list(keys), list(memory_objs))
            return
        await self.loop.run_in_executor(None, self._put_many, list(keys), list(memory_objs))

    async def list(self) -> list[str]:
        """kvstore keeps hashed keys, not LMCache's key strings: nothing to list by name."""
        return []

    async def close(self) -> None:
        if self.buffers is not None:
            # LMCache's own allocator again (the StorageManager may outlive this connector)
            del self.local_cpu_backend.allocate, self.local_cpu_backend.batched_allocate
            self.buffers.close()
        if self.leases is not None:
            self.leases.close()
        self.client.close()


def _commit_slots(request: pb.CommitSlotsRequest) -> Any:
    """The SDK's sans-I/O form of one CommitSlots call (no public SDK method: only a client that
    hands out slots as buffers, like this plugin, commits by slot)."""
    return (yield Rpc("CommitSlots", request))
