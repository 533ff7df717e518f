"""LMCache remote-storage plugin: LMCache stores and loads its KV chunks through a running kvstore.

Why this interface: LMCache 0.5.6 offers a `RemoteConnector` plugin for the in-process engine that
vLLM users run today (`remote_storage_plugins`), and an L2 adapter for its newer multi-process
server. The in-process engine is what most deployments use, so this is the one we ship first.

- Keys: each chunk key (`CacheEngineKey.to_string()`: model, world, worker, chunk hash, dtype,
  tags) becomes an opaque 32-byte kvstore key; a batched put sends the chunks of a request as a
  chain, each with its parent.
- Bytes: kvstore stores blocks of exactly the namespace's `block_bytes`. A full chunk is that size;
  a partial last chunk is padded. LMCache's own metadata (length, shapes, dtypes, format) travels as
  the block's meta, so a chunk comes back byte-identical with the same shape and dtype.
- Sessions: a request tagged `lmcache.tag.session_id` (configurable) is attached to that kvstore
  session, so agent hints (tool calls, waits) move the KV that LMCache stored.
- Failure: if kvstore is down or slow, every call is bounded by a timeout and turns into a miss (or
  a dropped put) with a log line; LMCache keeps serving.

Config (LMCache `extra_config`, plugin name `kvstore`):
    remote_storage_plugins: ["kvstore"]
    extra_config:
      remote_storage_plugin.kvstore.module_path: kvstore.integrations.lmcache.connector
      remote_storage_plugin.kvstore.class_name: KVStoreConnector
      remote_storage_plugin.kvstore.address: 127.0.0.1:50551
      remote_storage_plugin.kvstore.namespace: lmcache
      remote_storage_plugin.kvstore.timeout_s: 1.0
      remote_storage_plugin.kvstore.session_tag: session_id
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from kvstore.sdk import Client
from kvstore.sdk.core import DEFAULT_ADDRESS
from lmcache.utils import CacheEngineKey
from lmcache.v1.memory_management import MemoryObj
from lmcache.v1.protocol import RemoteMetadata
from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector

from kvstore.errors import KVStoreError
from kvstore.hashing import opaque_key

log = logging.getLogger("kvstore.integrations.lmcache")


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
        self.session_tag = str(setting("session_tag", "session_id"))
        shared = str(setting("shared_memory", "true")).lower() not in ("false", "0", "no", "off")
        self.client = Client(self.address, timeout=float(setting("timeout_s", 1.0)), shared_memory=shared)
        self._block_bytes: int | None = None
        # (shapes, dtypes, format) of a full chunk, once one was seen: gets then read straight into
        # LMCache buffers allocated up front, with no copy in between.
        self._full_layout: tuple[Any, Any, Any] | None = None
        self._healthy = True

    # ------------------------------------------------------------------ helpers

    def _key(self, key: CacheEngineKey) -> bytes:
        return opaque_key(key.to_string())

    def _session(self, key: CacheEngineKey) -> str | None:
        return dict(key.tags or ()).get(self.session_tag)

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
            if info.block_bytes < self.full_chunk_size_bytes:
                raise KVStoreError(
                    f"kvstore namespace {self.namespace!r} stores {info.block_bytes}-byte blocks but LMCache "
                    f"chunks are {self.full_chunk_size_bytes} bytes; set block_bytes: "
                    f"{self.full_chunk_size_bytes} for it in the kvstore config"
                )
            self._block_bytes = info.block_bytes
        return self._block_bytes

    def _encode(self, memory_obj: MemoryObj) -> tuple[Any, bytes]:
        buffer = memory_obj.byte_array
        meta = RemoteMetadata(
            len(buffer), memory_obj.get_shapes(), memory_obj.get_dtypes(), memory_obj.get_memory_format()
        ).serialize()
        pad = self._block_size() - len(buffer)
        if len(buffer) == self.full_chunk_size_bytes:
            self._full_layout = (
                memory_obj.get_shapes(),
                memory_obj.get_dtypes(),
                memory_obj.get_memory_format(),
            )
        # A full chunk goes as a view of LMCache's buffer: one copy, straight into the slot.
        data = bytes(buffer) + bytes(pad) if pad else np.frombuffer(buffer, dtype=np.uint8)
        return data, bytes(meta)

    def _decode(self, data: bytes, meta: bytes) -> MemoryObj | None:
        md = RemoteMetadata.deserialize(bytearray(meta))
        memory_obj = self.local_cpu_backend.allocate(md.shapes, md.dtypes, md.fmt)
        if memory_obj is None:
            log.debug("LMCache has no CPU buffer free for a chunk from kvstore")
            return None
        # byte_array is a '<B' memoryview, which refuses slice assignment from bytes: copy via numpy
        dst = np.frombuffer(memory_obj.byte_array, dtype=np.uint8)
        dst[: md.length] = np.frombuffer(data, dtype=np.uint8, count=md.length)
        if md.length == self.full_chunk_size_bytes:
            self._full_layout = (md.shapes, md.dtypes, md.fmt)
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
        if not keys:
            return []
        buffers = self._full_chunk_buffers(len(keys))
        try:
            stored = self.client.fetch(
                self.namespace,
                [self._key(k) for k in keys],
                session=self._session(keys[0]),
                into=[np.frombuffer(b.byte_array, dtype=np.uint8) for b in buffers] if buffers else None,
            )
        except (KVStoreError, ValueError) as exc:
            self._failed("get", exc)
            for b in buffers or ():
                b.ref_count_down()
            return [None] * len(keys)
        self._ok()
        if buffers is None:
            return [self._decode(b.data, b.meta) if b is not None else None for b in stored]
        out: list[MemoryObj | None] = []
        for block, buffer in zip(stored, buffers, strict=True):
            if block is not None and self._is_full_chunk(block.meta):
                out.append(buffer)
                continue
            # A miss, or a partial chunk: give the buffer back (a partial chunk is copied out first).
            out.append(self._decode(bytes(buffer.byte_array), block.meta) if block is not None else None)
            buffer.ref_count_down()
        return out

    def _full_chunk_buffers(self, n: int) -> list[MemoryObj] | None:
        """LMCache buffers to read n full chunks into, when blocks are exactly chunk-sized."""
        if self._full_layout is None or self._block_size() != self.full_chunk_size_bytes:
            return None
        shapes, dtypes, fmt = self._full_layout
        buffers = self.local_cpu_backend.batched_allocate(shapes, dtypes, n, fmt)
        if buffers is None or any(len(b.byte_array) != self.full_chunk_size_bytes for b in buffers):
            for b in buffers or ():
                b.ref_count_down()
            return None
        return buffers

    def _is_full_chunk(self, meta: bytes) -> bool:
        md = RemoteMetadata.deserialize(bytearray(meta))
        return md.length == self.full_chunk_size_bytes and self._full_layout == (md.shapes, md.dtypes, md.fmt)

    def _put_many(self, keys: list[CacheEngineKey], memory_objs: list[MemoryObj]) -> None:
        if not keys:
            return
        try:
            encoded = [self._encode(m) for m in memory_objs]
            self.client.put(
                self.namespace,
                [self._key(k) for k in keys],
                [d for d, _ in encoded],
                metas=[m for _, m in encoded],
                session=self._session(keys[0]),
            )
        except (KVStoreError, ValueError) as exc:
            self._failed("put", exc)
            return
        self._ok()

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
        return await self.loop.run_in_executor(None, self._get_many, list(keys))

    def support_batched_put(self) -> bool:
        return True

    async def batched_put(self, keys: list[CacheEngineKey], memory_objs: list[MemoryObj]) -> None:
        await self.loop.run_in_executor(None, self._put_many, list(keys), list(memory_objs))

    async def list(self) -> list[str]:
        """kvstore keeps hashed keys, not LMCache's key strings: nothing to list by name."""
        return []

    async def close(self) -> None:
        self.client.close()
