"""vLLM KV connector (`KVConnectorBase_V1`, vLLM 0.32): the engine's KV blocks kept in kvstore.

    --kv-transfer-config '{"kv_connector": "KVStoreConnector",
                           "kv_connector_module_path": "kvstore.integrations.vllm.connector",
                           "kv_role": "kv_both", "kv_load_failure_policy": "recompute",
                           "kv_connector_extra_config": {"address": "127.0.0.1:50551",
                                                         "namespace": "llama3-8b"}}'

- Scheduler side (`scheduler.py`): for a new request, how many tokens kvstore holds right after
  the engine's own prefix-cache hit (one Lookup of vLLM's block hashes); after allocation, which
  engine blocks to load them into; when a request finishes, which of its full blocks to save.
- Worker side (`worker.py`): loads into the paged KV cache before the step's forward, saves on a
  background thread after the request finished, over the same-host shared-memory data plane.
- Sessions: a request whose `kv_transfer_params` carry `session_id` (configurable) is that
  kvstore session's: its loads mark the session back, and what it saved is bound to the session,
  so agent hints move the KV the engine stored.

Why loads are synchronous (the request runs in the step that loads it, `load_kv_async=False`):
on the same host a load is one memcpy from kvstore's shared memory plus one scatter, a few GB/s,
so a long prefix costs milliseconds against the hundreds a recompute costs; holding the request
in WAITING_FOR_REMOTE_KVS would add at least one engine step of latency to every hit and a second
completion path to get right. The price: a very long load delays the other requests of its step;
an asynchronous load (`get_finished` reporting receives) is the way out for remote tiers.

If kvstore is down or slow, every call is bounded by `timeout_s` and becomes a miss (or a dropped
save) with one log line, and kvstore is left alone for `retry_s`; blocks that a lookup promised
but the load did not find are recomputed by the engine (`kv_load_failure_policy: recompute`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from kvstore.integrations.vllm.scheduler import SchedulerSide, StepPlan
from kvstore.integrations.vllm.settings import ConnectorSettings, log
from kvstore.integrations.vllm.worker import WorkerSide
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.v1.metrics.cache_hit_source import CacheHitSource

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request


class KVStoreConnectorMetadata(KVConnectorMetadata):
    """One step's loads and saves, from the scheduler side to the workers."""

    def __init__(self, plan: StepPlan) -> None:
        self.plan = plan


def engine_block_bytes(kv_cache_config: KVCacheConfig) -> int:
    """Bytes of one engine block over all layers: the kvstore namespace's block_bytes."""
    return sum(g.kv_cache_spec.page_size_bytes * len(g.layer_names) for g in kv_cache_config.kv_cache_groups)


class KVStoreConnector(KVConnectorBase_V1):
    _cache_hit_source = CacheHitSource.HOST

    def __init__(
        self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig
    ) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        transfer = self._kv_transfer_config
        self.settings = ConnectorSettings.from_extra(transfer.kv_connector_extra_config)
        self.block_size = vllm_config.cache_config.block_size
        self.num_blocks = kv_cache_config.num_blocks
        if len(kv_cache_config.kv_cache_groups) != 1:
            # Hybrid models (several KV cache groups) hash and allocate per group: not covered yet.
            raise ValueError("KVStoreConnector supports models with one KV cache group (no hybrid attention)")
        hash_block = kv_cache_config.hash_block_size
        if hash_block is not None and hash_block != self.block_size:
            raise ValueError(
                f"KVStoreConnector needs hash_block_size == block_size ({hash_block} != {self.block_size})"
            )
        if transfer.kv_load_failure_policy != "recompute":
            log.warning(
                "kv_load_failure_policy is %r: a block kvstore loses between lookup and load fails "
                'its request; set "kv_load_failure_policy": "recompute" to recompute it instead',
                transfer.kv_load_failure_policy,
            )
        self.scheduler: SchedulerSide | None = None
        self.worker: WorkerSide | None = None
        if role == KVConnectorRole.SCHEDULER:
            self.scheduler = SchedulerSide(
                self.settings, self.block_size, engine_block_bytes(kv_cache_config)
            )
        else:
            self.worker = WorkerSide(self.settings)
        log.info(
            "KVStoreConnector (%s) on kvstore %s, namespace %s",
            role.name.lower(),
            self.settings.address,
            self.settings.namespace,
        )

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a cache: a dropped save is a later miss, never a lost hand-off

    def _plan(self) -> StepPlan:
        meta = self._get_connector_metadata()
        assert isinstance(meta, KVStoreConnectorMetadata)
        return meta.plan

    # ---------------------------------------------------------------- worker side

    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        assert self.worker is not None
        self.worker.register(kv_caches, self.num_blocks)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        assert self.worker is not None
        self.worker.load(self._plan())

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # every layer was loaded in start_load_kv

    def save_kv_layer(
        self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: AttentionMetadata, **kwargs: Any
    ) -> None:
        return  # saves go after the request finished (wait_for_save), not layer by layer

    def wait_for_save(self) -> None:
        assert self.worker is not None
        self.worker.save(self._plan())

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        assert self.worker is not None
        return self.worker.finished_saves(finished_req_ids), None

    def get_block_ids_with_load_errors(self) -> set[int]:
        assert self.worker is not None
        return self.worker.take_load_errors()

    def shutdown(self) -> None:
        if self.worker is not None:
            self.worker.close()
        if self.scheduler is not None:
            self.scheduler.close()

    # ---------------------------------------------------------------- scheduler side

    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        assert self.scheduler is not None
        return self.scheduler.matched_tokens(request, num_computed_tokens), False

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        assert self.scheduler is not None
        self.scheduler.allocated(request, blocks.get_block_ids()[0], num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        assert self.scheduler is not None
        return KVStoreConnectorMetadata(self.scheduler.step_plan())

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        assert self.scheduler is not None
        return self.scheduler.finished(request, block_ids), None
