"""Tiers, fastest first: hbm (torch device buffer), dram (host buffer), disk (checksummed files)."""

from __future__ import annotations

import logging

import torch

from kvstore.config import ConfigError, Settings
from kvstore.shm.segments import shm_room
from kvstore.tiers.base import CorruptBlock, Tier
from kvstore.tiers.disk import DiskTier
from kvstore.tiers.memory import MemoryTier, hbm_device

log = logging.getLogger(__name__)


def build_tiers(settings: Settings) -> list[Tier]:
    """The tiers a server with these settings runs, fastest first."""
    tiers: list[Tier] = []
    cuda = torch.cuda.is_available()
    hbm_on = settings.hbm.enabled == "on" or (settings.hbm.enabled == "auto" and cuda)
    hbm = hbm_device(settings.hbm.device)
    # Host tiers to share: DRAM, and HBM's CPU stand-in (a GPU's HBM would go by CUDA IPC instead).
    hbm_on_host = hbm_on and torch.device(hbm).type == "cpu"
    needed = int(settings.hbm.capacity) * hbm_on_host + int(settings.dram.capacity) * settings.dram.enabled
    share = share_host_tiers(settings, needed)
    if hbm_on:
        tiers.append(MemoryTier("hbm", int(settings.hbm.capacity), hbm, shared=share and hbm_on_host))
    if settings.dram.enabled:
        tiers.append(MemoryTier("dram", int(settings.dram.capacity), "cpu", pin_memory=cuda, shared=share))
    if settings.disk.enabled:
        tiers.append(DiskTier(settings.data_dir, int(settings.disk.capacity), settings.disk.fsync))
    return tiers


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
