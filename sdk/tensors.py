"""Blocks as torch tensors: dtype and shape travel in the block's meta, so they round-trip.

torch is imported only when a tensor is actually passed or returned: the SDK must stay importable
(and fast to import) for agent frameworks that never touch tensors.
"""

from __future__ import annotations

import json
import sys
from typing import Any

META_PREFIX = b"kvstore.tensor:"


def is_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def encode(block: Any) -> tuple[bytes, bytes]:
    """(data, meta) of a block given as a tensor or as bytes-like."""
    if isinstance(block, bytes):
        return block, b""  # protobuf copies it once anyway; no copy of our own
    if not is_tensor(block):
        return bytes(memoryview(block).cast("B")), b""
    import torch

    tensor = block.detach().contiguous()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    dtype = str(tensor.dtype).removeprefix("torch.")
    meta = META_PREFIX + json.dumps({"dtype": dtype, "shape": list(tensor.shape)}).encode()
    return tensor.reshape(-1).view(torch.uint8).numpy().tobytes(), meta


def decode(data: bytes, meta: bytes) -> Any:
    """bytes, or a tensor when the block was put as one."""
    if not meta.startswith(META_PREFIX):
        return data
    import torch

    spec = json.loads(meta[len(META_PREFIX) :])
    flat = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return flat.view(getattr(torch, spec["dtype"])).reshape(spec["shape"])
