"""The benchmarks' fake OpenAI-compatible server: ``aiohttp.web`` on 127.0.0.1 in a process of its own.

    python bench/_fast_server.py LATENCY_S ANSWER_JSON     # prints the port, serves until stdin closes

Every chat completion is answered with ``ANSWER_JSON`` as the message content, after ``LATENCY_S`` seconds
(an ``asyncio.sleep``: any number of requests wait at once). It spends ~0.1-0.2 ms of CPU per request
where ``dspydantic.testing.FakeLLMServer`` (a threaded ``http.server``, made for tests: recording,
scripted faults) spends ~0.9 ms, so at 256-way on two cores the server no longer sets the client's
figure. Every client in a run (ours and every peer) talks to this same server. Nagle is off on its sockets.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import sys
import time
from typing import Any

from aiohttp import web


def app(latency: float, content: str) -> web.Application:
    counter = itertools.count(1)
    completion_tokens = max(1, len(content) // 4)

    async def chat(request: web.Request) -> web.Response:
        body: dict[str, Any] = json.loads(await request.read() or b"{}")
        prompt_tokens = max(1, sum(len(str(m.get("content", ""))) for m in body.get("messages", ())) // 4)
        if latency > 0:
            await asyncio.sleep(latency)
        model = body.get("model")
        reply = {
            "id": f"chatcmpl-fake-{next(counter)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model if isinstance(model, str) else "fake",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        return web.Response(body=json.dumps(reply).encode(), content_type="application/json")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    application = web.Application(client_max_size=64 << 20)
    for prefix in ("/v1", ""):
        application.router.add_post(prefix + "/chat/completions", chat)
        application.router.add_get(prefix + "/models", models)
    return application


async def serve(latency: float, content: str) -> None:
    runner = web.AppRunner(app(latency, content), access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)  # 256 clients connect at once
    site = web.SockSite(runner, sock, backlog=1024)
    await site.start()
    print(sock.getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    await runner.cleanup()


def main() -> None:
    latency = float(sys.argv[1])
    answer = json.loads(sys.argv[2])
    content = answer if isinstance(answer, str) else json.dumps(answer)
    asyncio.run(serve(latency, content))


if __name__ == "__main__":
    main()
