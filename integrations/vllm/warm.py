"""Warm requests driven by kvstore's plans (DESIGN §1, "warm request").

The engine owns its KV cache: kvstore can bring a session's KV back to its own DRAM ahead of time,
but only a request through the engine puts it in the engine's cache. So when kvstore's policy
expects a session back (a tool call nearing its learned return, a person typing), it publishes a
warm plan (`WatchPlans`), and this helper sends the session's last prompt again for one token: the
connector loads its KV from kvstore into the engine's cache, where the session's next real request
finds it as a plain prefix-cache hit.

- `PlanWatcher`: the subscription, on a thread of its own. It reconnects when the stream breaks
  (kvstore restarted, or down: one log line, then a retry every few seconds) and never raises.
- `LLMWarmer`: the hook for vLLM's offline `LLM`. Requests go through `LLMWarmer.generate`, which
  tags them with their session (`kv_transfer_params`) and remembers each session's last prompt;
  a warm plan becomes `llm.generate(last prompt, max_tokens=1)`. `LLM` is not thread-safe, so
  every call into it takes `lock`.

A warm request is tagged `kvstore_warm`: the connector loads for it without naming the session to
kvstore (the session is not back yet; naming it would end its tool call) and saves nothing.
For `vllm serve`, `kvstore proxy` remembers last requests and sends the same one-token request
over HTTP (`kvstore.proxy.warm.Warmer`); a `PlanWatcher` can drive it the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kvstore.integrations.vllm.settings import SESSION_KEY, WARM_KEY
from kvstore.sdk import Client, KVStoreError, PlanEvent

log = logging.getLogger("kvstore.integrations.vllm.warm")

STREAM_S = 60.0  # a subscription is renewed this often, so a silent broken stream cannot last
RETRY_S = 2.0  # wait between attempts while kvstore is unreachable
MAX_SESSIONS = 4096  # last prompts remembered (least recently used go first)


class PlanWatcher:
    """Calls `on_warm(event)` for every warm plan kvstore publishes for `namespace`."""

    def __init__(self, address: str, namespace: str, on_warm: Callable[[PlanEvent], None]) -> None:
        self.address = address
        self.namespace = namespace
        self.on_warm = on_warm
        self._client = Client(address, timeout=5.0, shared_memory=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvstore-plans", daemon=True)

    def start(self) -> PlanWatcher:
        self._thread.start()
        return self

    def _run(self) -> None:
        healthy = True
        while not self._stop.is_set():
            try:
                for event in self._client.watch_plans(self.namespace, kinds=["warm"], for_s=STREAM_S):
                    if not healthy:
                        log.info("kvstore at %s: watching plans again", self.address)
                    healthy = True
                    if event.dropped_before:
                        log.warning("%d warm plans were dropped (read too slowly)", event.dropped_before)
                    self._deliver(event)
                    if self._stop.is_set():
                        return
            except KVStoreError as exc:
                if self._stop.is_set():
                    return
                if healthy:
                    log.warning("kvstore at %s: plan stream broken, retrying: %s", self.address, exc)
                healthy = False
                self._stop.wait(RETRY_S)

    def _deliver(self, event: PlanEvent) -> None:
        try:
            self.on_warm(event)
        except Exception:  # one bad warm must not end the subscription
            log.exception("warm for session %s failed", event.session)

    def stop(self) -> None:
        self._stop.set()
        self._client.close()  # cancels the stream the thread waits on
        if self._thread.is_alive():
            self._thread.join(timeout=10)


@dataclass(frozen=True)
class Warmed:
    session: str
    seconds: float
    error: str = ""


class LLMWarmer:
    """Session-tagged generation on an offline `vllm.LLM`, with warm requests on kvstore's plans."""

    def __init__(self, llm: Any, address: str, namespace: str, session_key: str = SESSION_KEY) -> None:
        self.llm = llm
        self.address = address
        self.namespace = namespace
        self.session_key = session_key
        self.lock = threading.RLock()  # LLM is not thread-safe: every call into it holds this
        self._last: OrderedDict[str, list[int]] = OrderedDict()
        self.done: list[Warmed] = []
        self._watcher: PlanWatcher | None = None

    def generate(
        self, prompts: Sequence[Sequence[int]], params: Any, session: str | None = None
    ) -> list[Any]:
        """`llm.generate` of token-id prompts, as requests of `session` (None: no session)."""
        if session:
            params = self._tagged(params, {self.session_key: session})
            with self.lock:
                self._last[session] = list(prompts[-1])
                self._last.move_to_end(session)
                while len(self._last) > MAX_SESSIONS:
                    self._last.popitem(last=False)
        with self.lock:
            return self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)

    def warm(self, session: str) -> Warmed:
        """Send the session's last prompt for one token, so its KV is in the engine's cache."""
        from vllm import SamplingParams

        started = time.perf_counter()
        with self.lock:
            prompt = self._last.get(session)
        if prompt is None:
            return self._record(Warmed(session, 0.0, "no prompt of this session seen"))
        params = self._tagged(
            SamplingParams(temperature=0.0, max_tokens=1), {self.session_key: session, WARM_KEY: True}
        )
        with self.lock:
            self.llm.generate([{"prompt_token_ids": prompt}], params, use_tqdm=False)
        return self._record(Warmed(session, time.perf_counter() - started))

    def _record(self, warmed: Warmed) -> Warmed:
        self.done.append(warmed)
        del self.done[:-1000]
        return warmed

    @staticmethod
    def _tagged(params: Any, transfer_params: dict[str, Any]) -> Any:
        params = params.clone()
        params.extra_args = {**(params.extra_args or {}), "kv_transfer_params": transfer_params}
        return params

    def watch(self) -> None:
        """Start warming sessions as kvstore's plans say they are due (idempotent)."""
        if self._watcher is None and self.address:
            self._watcher = PlanWatcher(self.address, self.namespace, lambda e: self.warm(e.session)).start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
