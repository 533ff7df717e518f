"""Tiers, fastest first: hbm (torch device buffer), dram (host buffer), disk (checksummed files)."""

from __future__ import annotations

import torch

from kvstore.config import Settings
from kvstore.tiers.base import CorruptBlock, Tier
from kvstore.tiers.disk import DiskTier
from kvstore.tiers.memory import MemoryTier, hbm_device


def build_tiers(settings: Settings) -> list[Tier]:
    """The tiers a server with these settings runs, fastest first."""
    tiers: list[Tier] = []
    cuda = torch.cuda.is_available()
    if settings.hbm.enabled == "on" or (settings.hbm.enabled == "auto" and cuda):
        tiers.append(MemoryTier("hbm", int(settings.hbm.capacity), hbm_device(settings.hbm.device)))
    if settings.dram.enabled:
        tiers.append(MemoryTier("dram", int(settings.dram.capacity), "cpu", pin_memory=cuda))
    if settings.disk.enabled:
        tiers.append(DiskTier(settings.data_dir, int(settings.disk.capacity), settings.disk.fsync))
    return tiers


__all__ = ["CorruptBlock", "DiskTier", "MemoryTier", "Tier", "build_tiers"]
