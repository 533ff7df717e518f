"""The thread hints run on: in arrival order, off the event loop, in batches.

Hints change session metadata under the store's lock, so they never run on the asyncio loop (a
move's bookkeeping would freeze health checks and every other RPC). A `ThreadPoolExecutor(1)`
did that but cost two thread handoffs and one loop wake-up per hint, which capped hint
throughput at under half a bare gRPC server's. Here the loop puts each hint on a queue; the
worker drains what has piled up (up to `BATCH`), runs it, and hands all the results back to the
loop in one `call_soon_threadsafe`, so under load one wake-up serves many hints.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

BATCH = 64
T = TypeVar("T")

_Job = tuple[asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]


def _settle(done: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in done:
        if future.cancelled():  # the RPC went away; its hint has run all the same
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


class HintWorker:
    """One thread that runs hint handlers for one event loop; `run` awaits a handler's result."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="kvstore-hint-worker", daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        future: asyncio.Future[T] = self._loop.create_future()
        self._jobs.put((future, fn, args))
        return await future

    def close(self) -> None:
        """Finish the hints already queued, then stop the thread (blocks: call it off the loop)."""
        self._jobs.put(None)
        self._thread.join()

    def _serve(self) -> None:
        stopping = False
        while not stopping:
            jobs = [self._jobs.get()]
            while len(jobs) < BATCH:
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            done = []
            for job in jobs:
                if job is None:
                    stopping = True
                    continue
                future, fn, args = job
                try:
                    done.append((future, fn(*args), None))
                except Exception as exc:  # a bad hint answers its own RPC; the thread goes on
                    done.append((future, None, exc))
            if done:
                try:
                    self._loop.call_soon_threadsafe(_settle, done)
                except RuntimeError:  # the loop closed under us at shutdown: nobody is waiting
                    log.debug("hint results dropped: event loop closed")
