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
    view, meta = encode_view(block)
    return view.tobytes(), meta


def encode_view(block: Any) -> tuple[memoryview, bytes]:
    """Like `encode`, without copying: a flat byte view of the block's memory (of a CPU copy, for
    a GPU tensor or a non-contiguous one). For writing it straight into shared memory."""
    if not is_tensor(block):
        view = memoryview(block)
        return (view if view.format == "B" and view.ndim == 1 else view.cast("B")), b""
    import torch

    tensor = block.detach().contiguous()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    dtype = str(tensor.dtype).removeprefix("torch.")
    meta = META_PREFIX + json.dumps({"dtype": dtype, "shape": list(tensor.shape)}).encode()
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy()), meta


def writable_view(buffer: Any) -> memoryview:
    """A flat byte view that writes land in: a writable buffer, or a contiguous CPU tensor."""
    if is_tensor(buffer):
        if buffer.device.type != "cpu" or not buffer.is_contiguous():
            raise ValueError("read into a contiguous CPU tensor (copy to the GPU afterwards)")
        import torch

        return memoryview(buffer.detach().reshape(-1).view(torch.uint8).numpy())
    view = memoryview(buffer)
    if view.readonly:
        raise ValueError(f"cannot read into a read-only {type(buffer).__name__}")
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def is_tensor_meta(meta: bytes) -> bool:
    return meta.startswith(META_PREFIX)


def decode(data: bytes | bytearray, meta: bytes) -> Any:
    """bytes, or a tensor when the block was put as one (sharing `data` when it is a bytearray)."""
    if not meta.startswith(META_PREFIX):
        return data
    import torch

    spec = json.loads(meta[len(META_PREFIX) :])
    flat = torch.frombuffer(data if isinstance(data, bytearray) else bytearray(data), dtype=torch.uint8)
    return flat.view(getattr(torch, spec["dtype"])).reshape(spec["shape"])
