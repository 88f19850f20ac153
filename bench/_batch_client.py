"""One client's batch against the fake server, run by ``bench/bench_runtime.py`` in a fresh process of its own.

    python bench/_batch_client.py CLIENT BASE_URL SERVER_PID N_DOCS WORKERS [BODY_JSON]

``CLIENT`` is ``ours-sync`` (``predict_batch``), ``ours-async`` (``apredict_batch``) or ``asyncopenai``
(``AsyncOpenAI`` + ``asyncio.gather`` under a semaphore, sending ``BODY_JSON``, our request body, with each
document as the user message). Each warms its connections with one batch of ``WORKERS`` documents, then times
``N_DOCS``; the last stdout line is a JSON object: wall seconds, this process's CPU seconds and the fake
server's (``/proc/<SERVER_PID>/stat``) over the timed batch, failed requests and the first failure.

Why a process per client: in one process, the batch of whichever client runs later pays for everything
imported and allocated before it (in a full ``make bench``: openai, dspy and LiteLLM from the CPU part, ~140,000
objects for the collector), and ours spent 0.28 ms of CPU per request instead of 0.22 there. Here each client
imports only what it needs. This script imports nothing from the project but the client it measures.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel


class Invoice(BaseModel):
    vendor: str
    invoice_number: str | None = None
    total: float
    currency: str
    due: str | None = None


def server_cpu(pid: int) -> float:
    """The server process's CPU time so far (user + system; NaN where /proc is not there)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def first_failure(results: list[Any]) -> tuple[int, str]:
    failed = [r for r in results if not isinstance(r, BaseModel)]
    return len(failed), (f"{type(failed[0]).__name__}: {str(failed[0])[:100]}" if failed else "")


def main() -> None:
    client, base_url, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
    n_docs, workers = int(sys.argv[4]), int(sys.argv[5])
    docs = [f"doc {i}" for i in range(n_docs)]
    if client == "ours-sync":
        from dspydantic import Prompter

        p = make_prompter(Prompter, base_url, workers)
        p.predict_batch(docs[:workers], max_workers=workers)  # warm connections
        t0, cpu0, srv0 = time.perf_counter(), time.process_time(), server_cpu(pid)
        out = p.predict_batch(docs, max_workers=workers)
        wall, cpu, srv = time.perf_counter() - t0, time.process_time() - cpu0, server_cpu(pid) - srv0
    elif client == "ours-async":
        from dspydantic import Prompter

        p = make_prompter(Prompter, base_url, workers)

        async def run() -> tuple[Any, float, float, float]:
            await p.apredict_batch(docs[:workers], max_workers=workers)  # warm connections
            t0, cpu0, srv0 = time.perf_counter(), time.process_time(), server_cpu(pid)
            got = await p.apredict_batch(docs, max_workers=workers)
            return got, time.perf_counter() - t0, time.process_time() - cpu0, server_cpu(pid) - srv0

        out, wall, cpu, srv = asyncio.run(run())
    elif client == "asyncopenai":
        out, wall, cpu, srv = asyncio.run(asyncopenai(base_url, json.loads(sys.argv[6]), docs, workers, pid))
    else:
        raise SystemExit(f"unknown client {client!r}")
    assert len(out) == n_docs, (len(out), n_docs)
    failed, first = first_failure(out)
    print(json.dumps({"seconds": wall, "client_cpu": cpu, "server_cpu": srv, "failed": failed,
                      "first_error": first}))


def make_prompter(prompter: Any, base_url: str, workers: int) -> Any:
    # max_connections (default 100) bounds the connections in flight: as many as workers here
    try:
        return prompter(Invoice, "openai/fake", api_base=base_url, api_key="k", max_connections=max(100, workers))
    except TypeError:  # an older dspydantic (PYTHONPATH pointing at it, for comparison): no such option
        return prompter(Invoice, "openai/fake", api_base=base_url, api_key="k")


async def asyncopenai(base_url: str, body: dict[str, Any], docs: list[str], workers: int,
                      pid: int) -> tuple[list[Any], float, float, float]:
    """``AsyncOpenAI`` + ``asyncio.gather`` (a semaphore of ``workers``), each answer validated."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=120.0)
    sem = asyncio.Semaphore(workers)

    async def one(doc: str) -> Invoice:
        messages = [body["messages"][0], {"role": "user", "content": doc}]
        async with sem:
            out = await client.chat.completions.create(**{**body, "messages": messages})
        return Invoice.model_validate_json(out.choices[0].message.content or "")

    await asyncio.gather(*(one(d) for d in docs[:workers]), return_exceptions=True)  # warm connections
    t0, cpu0, srv0 = time.perf_counter(), time.process_time(), server_cpu(pid)
    results = await asyncio.gather(*(one(d) for d in docs), return_exceptions=True)
    took, cpu, srv = time.perf_counter() - t0, time.process_time() - cpu0, server_cpu(pid) - srv0
    await client.close()
    return list(results), took, cpu, srv


if __name__ == "__main__":
    main()
