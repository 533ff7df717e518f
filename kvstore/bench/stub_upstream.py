"""A stub engine for the proxy's tests and benchmark, speaking OpenAI chat completions, completions
and responses and Anthropic messages, streamed or not.

It answers like a model that calls the first tool it is offered, once, and answers in text after
the tool's result comes back. It records every request it gets (`requests`, or
`GET /stub/requests` from another process). `x-stub-status: 503` makes it answer that error.

    python -m kvstore.bench.stub_upstream --port 8000 --chunks 16 --chunk-delay-ms 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

_ids = itertools.count(1)


def _offered_tool(body: dict[str, Any], kind: str) -> str | None:
    """The first tool's name when the model should call it now, else None (answer in text)."""
    tools = body.get("tools") or []
    if not tools:
        return None
    first = tools[0]
    name = first.get("function", {}).get("name") if "function" in first else first.get("name")
    if kind == "chat":
        last = (body.get("messages") or [{}])[-1]
        return None if last.get("role") == "tool" else name
    if kind == "messages":
        content = (body.get("messages") or [{}])[-1].get("content")
        results = isinstance(content, list) and any(b.get("type") == "tool_result" for b in content)
        return None if results else name
    items = body.get("input")
    results = isinstance(items, list) and any(i.get("type") == "function_call_output" for i in items)
    return None if results else name


class StubUpstream:
    def __init__(self, chunks: int = 8, chunk_delay_s: float = 0.0, first_delay_s: float = 0.0) -> None:
        self.chunks = chunks
        self.chunk_delay_s = chunk_delay_s
        self.first_delay_s = first_delay_s
        self.requests: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 2**20, middlewares=[_asked_status])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/responses", self._responses)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stub/requests", self._recorded)
        return app

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        self.requests.append(
            {
                "path": request.path_qs,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body,
            }
        )
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(
                text=json.dumps(
                    {"error": {"message": "the body is not a JSON object", "type": "invalid_request"}}
                ),
                content_type="application/json",
            )
        if self.first_delay_s:
            await asyncio.sleep(self.first_delay_s)
        return body

    def _words(self) -> list[str]:
        return [f"word{i} " for i in range(self.chunks)]

    async def _stream(self, request: web.Request, events: AsyncIterator[bytes]) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        async for event in events:
            await response.write(event)
        await response.write_eof()
        return response

    async def _paced(self, items: Sequence[Any]) -> AsyncIterator[Any]:
        for i, item in enumerate(items):
            if i and self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            yield item

    # ---------------------------------------------------------------- OpenAI chat completions

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        tool = _offered_tool(body, "chat")
        rid, model = f"chatcmpl-{next(_ids)}", body.get("model", "stub")
        call = {"id": f"call_{next(_ids)}", "type": "function", "function": {"name": tool, "arguments": "{}"}}
        if not body.get("stream"):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None if tool else "".join(self._words()),
            }
            if tool:
                message["tool_calls"] = [call]
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if tool else "stop"}
            return web.json_response(
                {"id": rid, "object": "chat.completion", "model": model, "choices": [choice]}
            )

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            payload = {"id": rid, "object": "chat.completion.chunk", "model": model, "choices": [choice]}
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        if tool:
            deltas = [
                {
                    "role": "assistant",
                    "tool_calls": [{**call, "index": 0, "function": {"name": tool, "arguments": ""}}],
                },
                *(
                    {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}
                    for _ in range(self.chunks - 1)
                ),
            ]
        else:
            deltas = [{"role": "assistant", "content": w} for w in self._words()]
        events = [chunk(d) for d in deltas] + [
            chunk({}, "tool_calls" if tool else "stop"),
            b"data: [DONE]\n\n",
        ]
        return await self._stream(request, self._paced(events))

    # ---------------------------------------------------------------- OpenAI completions

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        rid = f"cmpl-{next(_ids)}"
        if not body.get("stream"):
            choice = {"index": 0, "text": "".join(self._words()), "finish_reason": "stop"}
            return web.json_response({"id": rid, "object": "text_completion", "choices": [choice]})
        events = [
            b"data: "
            + json.dumps({"id": rid, "choices": [{"index": 0, "text": w, "finish_reason": None}]}).encode()
            + b"\n\n"
            for w in self._words()
        ]
        final = {"id": rid, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}
        events += [b"data: " + json.dumps(final).encode() + b"\n\n", b"data: [DONE]\n\n"]
        return await self._stream(request, self._paced(events))

    # ---------------------------------------------------------------- Anthropic messages

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        tool = _offered_tool(body, "messages")
        mid = f"msg_{next(_ids)}"
        block = (
            {"type": "tool_use", "id": f"toolu_{next(_ids)}", "name": tool, "input": {}}
            if tool
            else {"type": "text", "text": "".join(self._words())}
        )
        stop = "tool_use" if tool else "end_turn"
        if not body.get("stream"):
            return web.json_response(
                {"id": mid, "type": "message", "role": "assistant", "content": [block], "stop_reason": stop}
            )

        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()

        start = {**block, "input": {}} if tool else {"type": "text", "text": ""}
        delta = {"type": "input_json_delta", "partial_json": "{}"} if tool else None
        events = [
            event(
                "message_start",
                {"message": {"id": mid, "type": "message", "role": "assistant", "content": []}},
            ),
            event("content_block_start", {"index": 0, "content_block": start}),
            *(
                event(
                    "content_block_delta", {"index": 0, "delta": delta or {"type": "text_delta", "text": w}}
                )
                for w in self._words()
            ),
            event("content_block_stop", {"index": 0}),
            event("message_delta", {"delta": {"stop_reason": stop}, "usage": {"output_tokens": self.chunks}}),
            event("message_stop", {}),
        ]
        return await self._stream(request, self._paced(events))

    # ---------------------------------------------------------------- OpenAI responses

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._body(request)
        tool = _offered_tool(body, "responses")
        item = (
            {
                "type": "function_call",
                "id": f"fc_{next(_ids)}",
                "call_id": f"call_{next(_ids)}",
                "name": tool,
                "arguments": "{}",
            }
            if tool
            else {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}
        )
        whole = {"id": f"resp_{next(_ids)}", "object": "response", "status": "completed", "output": [item]}
        if not body.get("stream"):
            return web.json_response(whole)

        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()

        events = [
            event("response.created", {"response": {**whole, "status": "in_progress", "output": []}}),
            event("response.output_item.added", {"output_index": 0, "item": item}),
            *(event("response.output_text.delta", {"delta": w}) for w in self._words()),
            event("response.completed", {"response": whole}),
        ]
        return await self._stream(request, self._paced(events))

    async def _models(self, request: web.Request) -> web.Response:
        self.requests.append(
            {
                "path": request.path_qs,
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": None,
            }
        )
        return web.json_response({"object": "list", "data": [{"id": "stub", "object": "model"}]})

    async def _recorded(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)


@web.middleware
async def _asked_status(request: web.Request, handler: Any) -> web.StreamResponse:
    """`x-stub-status: N`: answer N with an error body, as an engine that refuses would."""
    status = request.headers.get("x-stub-status")
    if status:
        await request.read()
        return web.json_response(
            {"error": {"message": f"stub answers {status}", "type": "stub"}}, status=int(status)
        )
    return await handler(request)


class AppThread:
    """An aiohttp app served on its own event loop in a background thread (tests, benchmarks)."""

    def __init__(self, app: web.Application, host: str = "127.0.0.1") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = web.AppRunner(app, access_log=None)
        self.url = asyncio.run_coroutine_threadsafe(self._start(host), self.loop).result(timeout=30)

    async def _start(self, host: str) -> str:
        await self.runner.setup()
        await web.TCPSite(self.runner, host, 0).start()
        return f"http://{host}:{self.runner.addresses[0][1]}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kvstore.bench.stub_upstream", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--chunks", type=int, default=8, help="chunks per streamed answer")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="pause between streamed chunks")
    parser.add_argument("--first-delay-ms", type=float, default=0.0, help="pause before answering")
    args = parser.parse_args(argv)
    stub = StubUpstream(args.chunks, args.chunk_delay_ms / 1000, args.first_delay_ms / 1000)

    async def run() -> None:
        runner = web.AppRunner(stub.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        print(f"stub upstream listening on http://{args.host}:{runner.addresses[0][1]}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
