"""Tiers, fastest first: hbm (torch device buffer), dram (host buffer), disk (checksummed files)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

from kvstore.config import ConfigError, Settings
from kvstore.shm.segments import shm_room
from kvstore.tiers.base import CorruptBlock, Tier
from kvstore.tiers.disk import DiskTier
from kvstore.tiers.memory import MemoryTier, hbm_device

log = logging.getLogger(__name__)


def build_tiers(settings: Settings) -> list[Tier]:
    """The tiers a server with these settings runs, fastest first. What this machine cannot give
    (a CUDA device it lacks, more memory than it has) is a ConfigError naming the setting."""
    tiers: list[Tier] = []
    cuda = torch.cuda.is_available()
    hbm_on = settings.hbm.enabled == "on" or (settings.hbm.enabled == "auto" and cuda)
    hbm = hbm_device(settings.hbm.device)
    if hbm_on:
        check_device(hbm)
    # Host tiers to share: DRAM, and HBM's CPU stand-in (a GPU's HBM would go by CUDA IPC instead).
    hbm_on_host = hbm_on and torch.device(hbm).type == "cpu"
    needed = int(settings.hbm.capacity) * hbm_on_host + int(settings.dram.capacity) * settings.dram.enabled
    memory = host_memory()
    if memory is not None and needed > memory:
        field = "dram.capacity" if settings.dram.enabled else "hbm.capacity"
        raise ConfigError(
            f"{field}: the host memory tiers need {needed} bytes but this machine has {memory} "
            "bytes of memory; lower the capacity"
        )
    share = share_host_tiers(settings, needed)
    try:
        if hbm_on:
            with _building("hbm.capacity"):
                tiers.append(MemoryTier("hbm", int(settings.hbm.capacity), hbm, shared=share and hbm_on_host))
        if settings.dram.enabled:
            with _building("dram.capacity"):
                tiers.append(
                    MemoryTier("dram", int(settings.dram.capacity), "cpu", pin_memory=cuda, shared=share)
                )
        if settings.disk.enabled:
            with _building("data_dir"):
                tiers.append(DiskTier(settings.data_dir, int(settings.disk.capacity), settings.disk.fsync))
    except BaseException:
        for tier in tiers:  # shared segments made so far go too, instead of leaking past exit
            tier.close()
        raise
    return tiers


def check_device(device: str) -> None:
    """hbm.device names a device this machine has."""
    kind = torch.device(device)
    if kind.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise ConfigError(
            f"hbm.device: {device!r} but CUDA is not available here (no GPU, or torch built without "
            "CUDA); use 'cpu' for a stand-in, or set hbm.enabled to 'off'"
        )
    count = torch.cuda.device_count()
    if kind.index is not None and kind.index >= count:
        raise ConfigError(f"hbm.device: {device!r} but this machine has {count} CUDA device(s) (cuda:0..)")


def host_memory() -> int | None:
    """Bytes of physical memory, where the platform says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@contextlib.contextmanager
def _building(field: str) -> Iterator[None]:
    """A tier that cannot be made (an allocation refused, a directory not writable) names its
    setting instead of surfacing as a torch or OS traceback."""
    try:
        yield
    except (RuntimeError, MemoryError, OSError, ValueError) as exc:
        raise ConfigError(f"{field}: cannot build the tier: {str(exc).splitlines()[0][:200]}") from None


def share_host_tiers(settings: Settings, needed: int) -> bool:
    """Whether host tiers go in shared memory: `auto` asks /dev/shm for room first, since writing
    past a full tmpfs kills the process (SIGBUS) instead of failing an allocation."""
    mode = settings.shared_memory.enabled
    if mode == "off" or needed == 0:
        return False
    room = shm_room()
    if room is not None and room >= needed:
        return True
    why = (
        "no /dev/shm"
        if room is None
        else f"/dev/shm has {room >> 20} MiB free, the host tiers need {needed >> 20} MiB"
    )
    if mode == "on":
        raise ConfigError(
            f"shared_memory.enabled is 'on' but {why}; lower the tier capacities or enlarge /dev/shm"
        )
    log.warning("host tiers stay private memory (%s): same-host clients will use gRPC", why)
    return False


__all__ = ["CorruptBlock", "DiskTier", "MemoryTier", "Tier", "build_tiers"]
