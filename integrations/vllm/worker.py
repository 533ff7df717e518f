"""The connector's worker side: loads into the paged KV cache before the forward, saves after.

Loads run in `start_load_kv`, before the step's forward (vLLM calls it first when a step has sync
loads); a block kvstore no longer has is reported through `get_block_ids_with_load_errors`, and
vLLM recomputes it (with `kv_load_failure_policy: recompute`). Saves run on one background thread:
the finished request's blocks are held by the scheduler until `get_finished` reports them saved, so
the engine never waits on a save and the bytes cannot change while they are copied.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import grpc
import torch
from kvstore.integrations.vllm.scheduler import SaveSpec, StepPlan
from kvstore.integrations.vllm.settings import ConnectorSettings, Guard, log
from kvstore.integrations.vllm.transfer import BlockTransfer, KVLayout
from kvstore.sdk import Client
from kvstore.sdk.core import target, translate

from kvstore.v1 import kvstore_pb2 as pb
from kvstore.v1 import kvstore_pb2_grpc as pb_grpc


class WorkerSide:
    def __init__(self, settings: ConnectorSettings) -> None:
        self.settings = settings
        self.client = Client(
            settings.address, timeout=settings.timeout_s, shared_memory=settings.shared_memory
        )
        self.guard = Guard(settings.address, settings.retry_s)
        # Sessions are bound with a hint (BindChain), not by saving with the session: a data-path
        # call would mark the session back, ending a tool call its agent may have begun already.
        self._channel = grpc.insecure_channel(target(settings.address))
        self._hints = pb_grpc.AgentHintsStub(self._channel)
        self.transfer: BlockTransfer | None = None
        self._usable: bool | None = None
        self._saver = ThreadPoolExecutor(1, thread_name_prefix="kvstore-save")
        self._lock = threading.Lock()
        self._pending: set[str] = set()  # requests whose save was submitted, not yet reported
        self._saved: set[str] = set()  # of those, saves done (or given up)
        self._finished: set[str] = set()  # of those, requests the engine told us finished
        self._load_errors: set[int] = set()

    def register(self, kv_caches: Mapping[str, torch.Tensor], num_blocks: int) -> None:
        self.transfer = BlockTransfer(KVLayout(kv_caches, num_blocks), self.client, self.settings.namespace)

    def _ready(self) -> BlockTransfer | None:
        """The transfer, once the namespace is known to hold blocks of the engine's size."""
        transfer = self.transfer
        if transfer is None or self._usable is False:
            return None
        if self._usable is None:
            info = self.guard.call(
                "describe namespace", lambda: self.client.namespace(self.settings.namespace), None
            )
            if info is None:
                return None
            self._usable = info.block_bytes == transfer.layout.block_bytes
            if not self._usable:
                log.error(
                    "kvstore namespace %r stores %d-byte blocks, the engine's are %d: nothing is "
                    "loaded or saved",
                    self.settings.namespace,
                    info.block_bytes,
                    transfer.layout.block_bytes,
                )
                return None
        return transfer

    # ---------------------------------------------------------------- loads

    def load(self, plan: StepPlan) -> None:
        for spec in plan.loads:
            transfer = self._ready()
            found = 0
            if transfer is not None:
                found = self.guard.call(
                    "load", lambda s=spec, t=transfer: t.load(s.keys, s.block_ids, s.session), 0
                )
            if found < len(spec.block_ids):
                log.info(
                    "request %s: %d of %d blocks not loaded from kvstore; the engine recomputes them",
                    spec.req_id,
                    len(spec.block_ids) - found,
                    len(spec.block_ids),
                )
                self._load_errors.update(spec.block_ids[found:])

    def take_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        return errors

    # ---------------------------------------------------------------- saves

    def save(self, plan: StepPlan) -> None:
        for spec in plan.saves:
            with self._lock:
                self._pending.add(spec.req_id)
            self._saver.submit(self._save, spec)

    def _save(self, spec: SaveSpec) -> None:
        try:
            transfer = self._ready()
            if transfer is None:
                return
            ns, keys = self.settings.namespace, spec.keys
            # Leading blocks kvstore has already (loaded from it, or saved by another session) are
            # not copied again; later ones it has are skipped by the put itself.
            stored = self.guard.call("lookup", lambda: self.client.lookup(ns, keys=keys).prefix_blocks, None)
            if stored is None:
                return
            if stored < len(keys):
                parent = keys[stored - 1] if stored else None
                done = self.guard.call(
                    "save", lambda: transfer.save(keys[stored:], spec.block_ids[stored:], parent), None
                )
                if done is None:
                    return
            if spec.session:
                self.guard.call("bind session", lambda: self._bind(spec.session or "", keys), None)
        except Exception:  # a save is best effort: it must never take the engine down
            log.exception("saving request %s to kvstore failed", spec.req_id)
        finally:
            with self._lock:
                self._saved.add(spec.req_id)

    def _bind(self, session: str, keys: list[bytes]) -> None:
        ns, timeout = self.settings.namespace, self.settings.timeout_s
        try:
            self._hints.OpenSession(pb.OpenSessionRequest(session=session, namespace=ns), timeout=timeout)
            self._hints.BindChain(
                pb.BindChainRequest(session=session, namespace=ns, keys=keys), timeout=timeout
            )
        except grpc.RpcError as exc:
            raise translate(exc) from None

    def finished_saves(self, finished_req_ids: set[str]) -> set[str] | None:
        """Requests whose save is over, among those the engine reported finished (vLLM's rule)."""
        with self._lock:
            self._finished |= finished_req_ids & self._pending
            done = self._saved & self._finished
            self._pending -= done
            self._saved -= done
            self._finished -= done
        return done or None

    def close(self) -> None:
        self._saver.shutdown(wait=True)
        self._channel.close()
        self.client.close()
