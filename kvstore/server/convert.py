"""Store objects -> proto messages, shared by the services."""

from __future__ import annotations

from kvstore.hashing import Namespace
from kvstore.v1 import kvstore_pb2 as pb


def namespace_info(ns: Namespace) -> pb.NamespaceInfo:
    return pb.NamespaceInfo(
        name=ns.name,
        model=ns.model,
        tenant=ns.tenant,
        adapter=ns.adapter,
        block_tokens=ns.block_tokens,
        block_bytes=ns.block_bytes,
        hash=ns.hash,
        seed=ns.seed,
    )
