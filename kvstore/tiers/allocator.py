"""Extent allocator over one preallocated buffer: best fit, freed extents coalesce.

Blocks of one namespace all have one size, so in the common case every free extent fits every
request and the search is a single bisect. Sizes are rounded up to `align` bytes.
"""

from __future__ import annotations

import bisect


class ExtentAllocator:
    def __init__(self, capacity: int, align: int = 512) -> None:
        if capacity < 0 or align < 1:
            raise ValueError("capacity must be >= 0 and align >= 1")
        self.capacity = capacity - capacity % align
        self.align = align
        self.used = 0
        self._allocated: dict[int, int] = {}  # offset -> size
        self._free_by_start: dict[int, int] = {}  # offset -> size
        self._free_by_end: dict[int, int] = {}  # end -> offset
        self._free_sorted: list[tuple[int, int]] = []  # (size, offset), best fit by bisect
        if self.capacity:
            self._add_free(0, self.capacity)

    def rounded(self, size: int) -> int:
        return -(-size // self.align) * self.align

    def allocate(self, size: int) -> int | None:
        """Offset of a fresh extent of at least `size` bytes, or None when no extent fits."""
        need = self.rounded(max(size, 1))
        i = bisect.bisect_left(self._free_sorted, (need, -1))
        if i == len(self._free_sorted):
            return None
        free_size, offset = self._free_sorted[i]
        self._remove_free(offset, free_size)
        if free_size > need:
            self._add_free(offset + need, free_size - need)
        self._allocated[offset] = need
        self.used += need
        return offset

    def free(self, offset: int) -> None:
        size = self._allocated.pop(offset)
        self.used -= size
        start, end = offset, offset + size
        prev_start = self._free_by_end.get(start)
        if prev_start is not None:
            self._remove_free(prev_start, start - prev_start)
            start = prev_start
        next_size = self._free_by_start.get(end)
        if next_size is not None:
            self._remove_free(end, next_size)
            end += next_size
        self._add_free(start, end - start)

    def size_of(self, offset: int) -> int:
        return self._allocated[offset]

    def extents(self) -> list[tuple[int, int]]:
        """Allocated (offset, size) pairs, sorted; for checks."""
        return sorted(self._allocated.items())

    def _add_free(self, offset: int, size: int) -> None:
        self._free_by_start[offset] = size
        self._free_by_end[offset + size] = offset
        bisect.insort(self._free_sorted, (size, offset))

    def _remove_free(self, offset: int, size: int) -> None:
        del self._free_by_start[offset]
        del self._free_by_end[offset + size]
        i = bisect.bisect_left(self._free_sorted, (size, offset))
        del self._free_sorted[i]
