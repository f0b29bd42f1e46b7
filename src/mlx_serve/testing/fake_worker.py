"""A fake OpenAI-compatible worker process with a switch per failure mode.

``python -m mlx_serve.testing.fake_worker --port P [flags]`` behaves like ``mlx_lm server``
closely enough for lifecycle tests: ``/health`` answers as soon as it listens (before the
"model" is loaded, like mlx_lm), completions wait for the load, streams emit one SSE chunk per
token and end with ``[DONE]``. Flags make it slow to load, never ready, crash, or ignore
SIGTERM, so crash/hang/timeout handling is tested with a real process and real signals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from aiohttp import web


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="fake")
    p.add_argument("--load-time", type=float, default=0.0, help="seconds before the model answers")
    p.add_argument("--never-ready", action="store_true", help="completions never answer")
    p.add_argument("--exit-on-start", type=int, default=None, help="exit with this code at once")
    p.add_argument("--crash-after-tokens", type=int, default=None, help="os._exit(3) mid-stream")
    p.add_argument("--ignore-sigterm", action="store_true")
    p.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    p.add_argument("--tokens", type=int, default=8, help="tokens per answer by default")
    p.add_argument(
        "--hang-after-requests", type=int, default=None,
        help="answer this many completions, then never answer one again (/health still does)",
    )  # fmt: skip
    p.add_argument(
        "--tool-call", default=None,
        help='JSON {"name": ..., "arguments": {...}}: answer every request that offers tools '
        "with this call (a random-weight model cannot be made to call one)",
    )  # fmt: skip
    p.add_argument(
        "--echo", action="store_true",
        help="answer with the request body the worker received (JSON text), to check what a "
        "dialect translated",
    )  # fmt: skip
    return p.parse_args(argv)


def _tool_call(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any] | None:
    """The configured call, when the request offers tools and does not forbid calling them."""
    if not args.tool_call or not body.get("tools") or body.get("tool_choice") == "none":
        return None
    spec = json.loads(args.tool_call)
    return {
        "id": "call_fake_1",
        "type": "function",
        "function": {"name": spec["name"], "arguments": json.dumps(spec.get("arguments", {}))},
    }


def _usage(n: int) -> dict[str, int]:
    return {"prompt_tokens": 3, "completion_tokens": n, "total_tokens": n + 3}


def _chunk(args: argparse.Namespace, kind: str, text: str, finish: str | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
    if kind == "chat":
        choice["delta"] = {"role": "assistant", "content": text}
        obj = "chat.completion.chunk"
    else:
        choice["text"] = text
        obj = "text_completion"
    return {"id": "fake", "object": obj, "created": int(time.time()), "model": args.model,
            "choices": [choice]}  # fmt: skip


#: The background "load" task, kept on the app so it is not garbage-collected mid-sleep.
LOADER = web.AppKey("loader", asyncio.Task[None])


def make_app(args: argparse.Namespace) -> web.Application:
    loaded = asyncio.Event()
    served = {"tokens": 0, "requests": 0}

    async def load() -> None:
        if args.never_ready:
            return
        await asyncio.sleep(args.load_time)
        loaded.set()

    async def on_startup(app: web.Application) -> None:
        app[LOADER] = asyncio.get_running_loop().create_task(load())

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def completion(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        kind = "chat" if request.path.endswith("chat/completions") else "text"
        await loaded.wait()
        served["requests"] += 1
        if args.hang_after_requests is not None and served["requests"] > args.hang_after_requests:
            await asyncio.Event().wait()  # wedged, like a dead generation thread
        n = int(body.get("max_tokens") or args.tokens)
        pid = os.getpid()
        words = [f"tok{i}" for i in range(n)]
        if args.echo:
            words, n = [json.dumps(body, sort_keys=True)], 1
        call = _tool_call(args, body) if kind == "chat" else None
        finish_reason = "tool_calls" if call else "length"
        if not body.get("stream"):
            await asyncio.sleep(args.token_delay * n)
            text = " ".join(words)
            if kind == "chat":
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if call:
                    message = {"role": "assistant", "content": None, "tool_calls": [call]}
                choice: dict[str, Any] = {
                    "index": 0, "finish_reason": finish_reason, "message": message,
                }  # fmt: skip
            else:
                choice = {"index": 0, "finish_reason": "length", "text": text}
            return web.json_response({
                "id": "fake", "object": "chat.completion" if kind == "chat" else "text_completion",
                "model": args.model, "choices": [choice], "system_fingerprint": str(pid),
                "usage": _usage(n),
            })  # fmt: skip
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(chunk: dict[str, Any]) -> None:
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        if call:
            # Streamed the way OpenAI does: the id and name first, the arguments in pieces.
            arguments = call["function"]["arguments"]
            first = {**call, "index": 0, "function": {"name": call["function"]["name"],
                                                      "arguments": ""}}  # fmt: skip
            pieces = [arguments[i : i + 7] for i in range(0, len(arguments), 7)]
            deltas = [{"role": "assistant", "content": None, "tool_calls": [first]}]
            deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": p}}]} for p in pieces]
            for delta in deltas:
                chunk = _chunk(args, kind, "", None)
                chunk["choices"][0]["delta"] = delta
                await send(chunk)
            done = _chunk(args, kind, "", "tool_calls")
            done["choices"][0]["delta"] = {}
            await send(done)
            n = len(deltas)
        for i, word in enumerate([] if call else words):
            served["tokens"] += 1
            if args.crash_after_tokens is not None and served["tokens"] > args.crash_after_tokens:
                os._exit(3)
            finish = "length" if i == n - 1 else None
            await send(_chunk(args, kind, word if args.echo else word + " ", finish))
            await asyncio.sleep(args.token_delay)
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({"id": "fake", "object": "chat.completion.chunk", "model": args.model,
                        "choices": [], "usage": _usage(n)})  # fmt: skip
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.on_startup.append(on_startup)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/completions", completion)
    app.router.add_post("/v1/chat/completions", completion)
    return app


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.exit_on_start is not None:
        print("fake worker: exiting on start as asked", flush=True)
        sys.exit(args.exit_on_start)
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(f"fake worker pid {os.getpid()} on port {args.port}", flush=True)
    web.run_app(make_app(args), host=args.host, port=args.port, print=None,
                handle_signals=not args.ignore_sigterm)  # fmt: skip


if __name__ == "__main__":
    main()
