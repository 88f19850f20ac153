"""Runtime benchmarks: CPU per extraction (sync and async), batch throughput, peak memory, cache-hit latency,
cold start; ours beside the peers in the same run.

    make bench          # = .venv/bin/python bench/bench_runtime.py --n 1000
    .venv/bin/python bench/bench_runtime.py [--n 2000] [--skip-peers] [--only cpu ...]

The fake server runs in a separate process so that only the client's CPU is measured. The batches and the
peak RSS run each client in a fresh process of its own (``bench/_batch_client.py``, the peers' scripts, the
``PEAK`` scripts) against the server this process started, so no client's figure carries what another one
imported or allocated. Every figure is a ratio measured in this one run (ours vs the ideal, ours vs a peer).
Peers: the OpenAI SDK (``OpenAI`` and ``AsyncOpenAI`` + ``asyncio.gather``; ``timeout=120`` like ours, not
its 5 s connect timeout, which a busy 2-core machine exceeds at 256-way) and ``dspy.Predict`` from this
environment; dspydantic 0.1.6 and instructor each from a virtualenv of its own under ``bench/.cache`` (see
``bench/_peers.py``), created on the first run and skipped with the reason printed when it cannot be installed.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import importlib.util
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _peers  # bench/_peers.py, beside this script

ROOT = Path(__file__).resolve().parent.parent
ANSWER = {"vendor": "Acme GmbH", "invoice_number": "INV-1", "total": 1200.5, "currency": "EUR", "due": "2024-03-01"}

SERVER = """
import sys, json
from dspydantic.testing import FakeLLMServer
srv = FakeLLMServer(latency=float(sys.argv[1])).start()
answer = json.loads(sys.argv[2])
srv.set_responder(lambda body: answer)
print(srv.port, flush=True)
sys.stdin.read()
"""


class Invoice(BaseModel):
    vendor: str
    invoice_number: str | None = None
    total: float
    currency: str
    due: str | None = None


class Server:
    def __init__(self, latency: float, answer: dict[str, Any] | str | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(latency), json.dumps(answer or ANSWER)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            stderr=subprocess.DEVNULL,  # http.server prints a traceback per connection a peer's client resets
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def cpu_per_call(fn: Any, n: int) -> float:
    for _ in range(min(50, n)):
        fn()
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n


def bench_cpu(n: int, peers: bool = True) -> None:
    from dspydantic import Prompter

    srv = Server(0.0)
    try:
        p = Prompter(Invoice, "openai/fake", api_base=srv.base_url, api_key="k")
        doc = "Invoice INV-1 from Acme GmbH, total 1.200,50 EUR, due 1 March 2024."
        # the ideal: the same request body, one keep-alive POST, parse, validate
        from dspydantic.lm import LMRequest

        r = p.renderer
        body = p.backend.body(  # type: ignore[attr-defined]
            LMRequest(messages=r.messages(doc), json_schema=r.schema, schema_name=r.schema_name)
        )
        payload = json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", srv.port)
        headers = {"Content-Type": "application/json", "Authorization": "Bearer k"}

        def ideal() -> None:
            conn.request("POST", "/v1/chat/completions", body=payload, headers=headers)
            data = json.loads(conn.getresponse().read())
            Invoice.model_validate_json(data["choices"][0]["message"]["content"])

        ours_s = cpu_per_call(lambda: p.run(doc), n)

        async def async_cpu() -> float:
            for _ in range(min(50, n)):
                await p.apredict(doc)
            t = time.process_time()
            for _ in range(n):
                await p.apredict(doc)
            return (time.process_time() - t) / n

        ours_async_s = asyncio.run(async_cpu())
        ideal_s = cpu_per_call(ideal, n)
        print(f"cpu/extraction  sync {ours_s * 1e3:.3f} ms  async {ours_async_s * 1e3:.3f} ms  (target <= 1.0 ms)  "
              f"ideal (bare http.client POST + model_validate_json) {ideal_s * 1e3:.3f} ms  "
              f"ratios {ours_s / ideal_s:.2f}x / {ours_async_s / ideal_s:.2f}x", flush=True)
        if not peers:
            return
        try:
            import openai

            client = openai.OpenAI(base_url=srv.base_url, api_key="k", max_retries=0, timeout=120.0)

            def sdk() -> None:
                out = client.chat.completions.create(**body)
                Invoice.model_validate_json(out.choices[0].message.content or "")

            sdk_s = cpu_per_call(sdk, max(n // 4, 50))

            async def sdk_async_cpu() -> float:
                aclient = openai.AsyncOpenAI(base_url=srv.base_url, api_key="k", max_retries=0, timeout=120.0)
                calls = max(n // 4, 50)
                for _ in range(20):
                    out = await aclient.chat.completions.create(**body)
                t = time.process_time()
                for _ in range(calls):
                    out = await aclient.chat.completions.create(**body)
                    Invoice.model_validate_json(out.choices[0].message.content or "")
                took = (time.process_time() - t) / calls
                await aclient.close()
                return took

            sdk_async_s = asyncio.run(sdk_async_cpu())
            print(f"cpu/extraction  openai SDK sync {sdk_s * 1e3:.3f} ms  AsyncOpenAI {sdk_async_s * 1e3:.3f} ms  "
                  f"ours/SDK {ours_s / sdk_s:.2f}x / {ours_async_s / sdk_async_s:.2f}x", flush=True)
        except ImportError:
            print("openai SDK not installed: peer skipped")
        for peer in _peers.PEERS:
            python, why = _peers.peer_python(peer)
            if python is None:
                print(f"cpu/extraction  {peer}: skipped ({why})", flush=True)
                continue
            answer = _peers.chat_adapter_answer(ANSWER) if peer.startswith("dspydantic") else None
            peer_srv = Server(0.0, answer) if answer else srv
            try:
                got = _peers.run_peer(python, peer, "cpu", peer_srv.base_url, max(n // 10, 50))
                print(f"cpu/extraction  {peer} sync {got['sync_ms']:.3f} ms  async {got['async_ms']:.3f} ms  "
                      f"ours/{peer} {ours_s * 1e3 / got['sync_ms']:.2f}x / {ours_async_s * 1e3 / got['async_ms']:.2f}x"
                      f"  (import {got['import_s']:.2f} s)", flush=True)
            except (RuntimeError, subprocess.SubprocessError) as exc:
                print(f"cpu/extraction  {peer}: failed ({exc})", flush=True)
            finally:
                if peer_srv is not srv:
                    peer_srv.close()
        try:
            import dspy

            class Sig(dspy.Signature):
                """Extract the invoice."""

                text: str = dspy.InputField()
                invoice: Invoice = dspy.OutputField()

            dspy_srv = Server(0.0, {"invoice": ANSWER})  # the answer in DSPy's JSONAdapter format
            try:
                lm = dspy.LM("openai/fake", api_base=dspy_srv.base_url, api_key="k", cache=False)
                pred = dspy.Predict(Sig)

                def dspy_call() -> None:
                    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
                        assert isinstance(pred(text=doc).invoice, Invoice)

                dspy_s = cpu_per_call(dspy_call, max(n // 10, 30))
            finally:
                dspy_srv.close()
            print(f"cpu/extraction  dspy.Predict {dspy_s * 1e3:.3f} ms  ours (sync)/dspy {ours_s / dspy_s:.2f}x",
                  flush=True)
        except ImportError:
            print("dspy not installed: peer skipped")
    finally:
        srv.close()


BATCH_CLIENT = Path(__file__).resolve().parent / "_batch_client.py"


def run_batch_client(client: str, srv: Server, n_docs: int, workers: int, *extra: str) -> dict[str, Any]:
    """One client's timed batch in a fresh process of its own (``bench/_batch_client.py``), against ``srv``:
    nothing this process imported or allocated before (the CPU part's openai, dspy, LiteLLM) is in its heap."""
    out = subprocess.run(
        [sys.executable, str(BATCH_CLIENT), client, srv.base_url, str(srv.proc.pid), str(n_docs), str(workers),
         *extra],
        capture_output=True, text=True, timeout=600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{client} batch failed: {' | '.join(out.stderr.strip().splitlines()[-3:])}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def bench_batch(n_docs: int = 200, workers: int = 32, latency: float = 0.1, sync: bool = True,
                peers: bool = True) -> None:
    """Each client (ours sync, ours async, every peer) runs its batch in a fresh process of its own against
    the same fake server process (0.1.6 gets one answering in DSPy's ChatAdapter format)."""
    srv = Server(latency)
    try:
        ideal = math.ceil(n_docs / workers) * latency
        line = f"batch {n_docs} docs x {latency * 1e3:.0f} ms, {workers}-way: ideal {ideal:.2f} s  "
        if sync:
            sync_s = run_batch_client("ours-sync", srv, n_docs, workers)["seconds"]
            line += f"sync {sync_s:.2f} s (fraction of ideal {ideal / sync_s:.2f})  "
        got = run_batch_client("ours-async", srv, n_docs, workers)
        async_s = got["seconds"]
        # where the CPU went, per request: the client (its process) and the fake server (its own process)
        print(line + f"async {async_s:.2f} s (fraction {ideal / async_s:.2f}; CPU per request: client "
              f"{got['client_cpu'] / n_docs * 1e3:.3f} ms, server {got['server_cpu'] / n_docs * 1e3:.3f} ms)",
              flush=True)
        if not peers:
            return
        label = f"batch {n_docs} x {workers}-way"
        if importlib.util.find_spec("openai") is None:  # not imported here: the batch's own process does
            print(f"{label}  AsyncOpenAI: openai not installed, skipped")
        else:
            from dspydantic import Prompter
            from dspydantic.lm import LMRequest

            p = Prompter(Invoice, "openai/fake", api_base=srv.base_url, api_key="k")
            r = p.renderer
            body = p.backend.body(  # type: ignore[attr-defined]  # our request body, sent by the SDK too
                LMRequest(messages=r.messages("doc"), json_schema=r.schema, schema_name=r.schema_name)
            )
            try:
                got = run_batch_client("asyncopenai", srv, n_docs, workers, json.dumps(body))
                sdk_s, failed = got["seconds"], got["failed"]
                target = "  (target >= 5x)" if workers >= 256 else ""
                failures = f"; {failed} of {n_docs} failed, first: {got['first_error']}" if failed else ""
                print(f"{label}  AsyncOpenAI + asyncio.gather {sdk_s:.2f} s (fraction {ideal / sdk_s:.2f}"
                      f"{failures})  ours is {sdk_s / async_s:.1f}x faster{target}", flush=True)
            except (RuntimeError, subprocess.SubprocessError) as exc:
                print(f"{label}  AsyncOpenAI: failed ({exc})", flush=True)
        for peer in _peers.PEERS:
            python, why = _peers.peer_python(peer)
            if python is None:
                print(f"{label}  {peer}: skipped ({why})", flush=True)
                continue
            answer = _peers.chat_adapter_answer(ANSWER) if peer.startswith("dspydantic") else None
            peer_srv = Server(latency, answer) if answer else srv
            try:
                got = _peers.run_peer(python, peer, "batch", peer_srv.base_url, n_docs, workers)
                failed = f"; {got['failed']} of {n_docs} failed, first: {got['first_error']}" if got["failed"] else ""
                print(f"{label}  {peer} apredict_batch/gather {got['seconds']:.2f} s (fraction "
                      f"{ideal / got['seconds']:.2f}; peak RSS {got['peak_mb']:.0f} MB{failed})  ours is "
                      f"{got['seconds'] / async_s:.1f}x faster", flush=True)
            except (RuntimeError, subprocess.SubprocessError) as exc:
                print(f"{label}  {peer}: failed ({exc})", flush=True)
            finally:
                if peer_srv is not srv:
                    peer_srv.close()
    finally:
        srv.close()


PEAK = """
import asyncio, json, resource, sys
from pydantic import BaseModel
from dspydantic import Prompter

class Invoice(BaseModel):
    vendor: str
    invoice_number: str | None = None
    total: float
    currency: str
    due: str | None = None

def hwm_kb():  # this process's peak RSS (VmHWM; ru_maxrss would carry the forking parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

n, workers, base = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
p = Prompter(Invoice, "openai/fake", api_base=base, api_key="k", max_connections=workers)
before = hwm_kb()
out = asyncio.run(p.apredict_batch([f"Invoice {i} from Acme GmbH, total {i},50 EUR" for i in range(n)],
                                   max_workers=workers))
assert len(out) == n
print(json.dumps({"before_kb": before, "peak_kb": hwm_kb()}))
"""


PEAK_SDK = """
import asyncio, json, resource, sys
import openai
from pydantic import BaseModel

class Invoice(BaseModel):
    vendor: str
    invoice_number: str | None = None
    total: float
    currency: str
    due: str | None = None

def hwm_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

n, workers, base = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
before = hwm_kb()

async def go():
    client = openai.AsyncOpenAI(base_url=base, api_key="k", max_retries=0, timeout=120.0)
    sem = asyncio.Semaphore(workers)

    async def one(i):
        async with sem:
            out = await client.chat.completions.create(model="fake", messages=[
                {"role": "system", "content": "Extract the invoice."},
                {"role": "user", "content": f"Invoice {i} from Acme GmbH, total {i},50 EUR"}],
                response_format={"type": "json_schema", "json_schema": {
                    "name": "Invoice", "schema": Invoice.model_json_schema()}})
        return Invoice.model_validate_json(out.choices[0].message.content or "")

    return await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)

out = asyncio.run(go())
assert len(out) == n
failed = sum(1 for o in out if not isinstance(o, Invoice))
print(json.dumps({"before_kb": before, "peak_kb": hwm_kb(), "failed": failed}))
"""


def bench_peak_rss(n_docs: int = 10_000, workers: int = 256, latency: float = 0.05, peers: bool = True) -> None:
    """Peak RSS of a fresh process extracting ``n_docs`` with ``apredict_batch`` at ``workers``-way."""
    srv = Server(latency)
    try:
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", PEAK, str(n_docs), str(workers), srv.base_url],
            capture_output=True, text=True, check=True,
        )
        took = time.perf_counter() - t
        data = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"peak RSS  {n_docs} docs, {workers}-way apredict_batch: {data['peak_kb'] / 1024:.1f} MB "
              f"(after imports {data['before_kb'] / 1024:.1f} MB; {took:.1f} s)  (target <= 70 MB)", flush=True)
        if peers:
            t = time.perf_counter()
            sdk = subprocess.run(
                [sys.executable, "-c", PEAK_SDK, str(n_docs), str(workers), srv.base_url],
                capture_output=True, text=True,
            )
            if sdk.returncode != 0:
                print(f"peak RSS  AsyncOpenAI: failed ({sdk.stderr.strip().splitlines()[-1:]})", flush=True)
            else:
                data = json.loads(sdk.stdout.strip().splitlines()[-1])
                failed = f", {data['failed']} requests failed" if data["failed"] else ""
                print(f"peak RSS  {n_docs} docs, {workers}-way AsyncOpenAI + asyncio.gather: "
                      f"{data['peak_kb'] / 1024:.1f} MB (after imports {data['before_kb'] / 1024:.1f} MB; "
                      f"{time.perf_counter() - t:.1f} s{failed})", flush=True)
    finally:
        srv.close()


def bench_cache(n: int) -> None:
    from dspydantic import Prompter

    srv = Server(0.0)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            p = Prompter(Invoice, "openai/fake", api_base=srv.base_url, api_key="k", cache=tmp)
            doc = "Invoice INV-1 from Acme GmbH, total 1.200,50 EUR."
            p.run(doc)
            t = time.perf_counter()
            for _ in range(n):
                p.run(doc)
            hit = (time.perf_counter() - t) / n
            p2 = Prompter(Invoice, "openai/fake", api_base=srv.base_url, api_key="k", cache=tmp)
            p2.run("warm-up document (a miss)")
            p2.cache._memory.clear()  # type: ignore[union-attr]  # measure the on-disk path too
            t = time.perf_counter()
            p2.run(doc)
            disk = time.perf_counter() - t
            print(f"cache hit  {hit * 1e3:.3f} ms (memory)  first hit from disk {disk * 1e3:.3f} ms  (target < 0.2 ms)")
    finally:
        srv.close()


def bench_cold_start(runs: int = 5) -> None:
    """Median wall time of a fresh process, and its CPU time (user + sys: less sensitive to a busy machine)."""
    exe = Path(sys.executable).parent / "dspydantic"

    def median(cmd: list[str]) -> tuple[float, float]:
        walls, cpus = [], []
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            walls.append(time.perf_counter() - t)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        return statistics.median(walls), statistics.median(cpus)

    bare, bare_cpu = median([sys.executable, "-c", "pass"])
    imp, imp_cpu = median([sys.executable, "-c", "import dspydantic"])
    cli, cli_cpu = median([str(exe), "--help"]) if exe.exists() else (float("nan"), float("nan"))
    print(f"cold start (wall / cpu)  python {bare:.3f} / {bare_cpu:.3f} s  import dspydantic {imp:.3f} / "
          f"{imp_cpu:.3f} s  dspydantic --help {cli:.3f} / {cli_cpu:.3f} s  "
          "(targets: import <= 0.4 s, --help < 0.5 s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--skip-peers", action="store_true",
                    help="only our own figures (no OpenAI SDK, dspy, dspydantic 0.1.6, instructor)")
    ap.add_argument("--only", choices=["cold", "cpu", "cache", "batch", "wide", "rss"], action="append",
                    help="run only these parts (repeatable); 'wide' is 2,000 docs at 256-way")
    args = ap.parse_args()
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    started = time.perf_counter()
    load = os.getloadavg()[0]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, load average {load:.2f}", flush=True)
    parts = set(args.only or ["cold", "cpu", "cache", "batch", "wide", "rss"])
    if "cold" in parts:
        bench_cold_start()
    if "cpu" in parts:
        bench_cpu(args.n, peers=not args.skip_peers)
    if "cache" in parts:
        bench_cache(args.n)
    peers = not args.skip_peers
    if "batch" in parts:
        bench_batch(peers=peers)
    if "wide" in parts:
        bench_batch(2000, 256, sync=False, peers=peers)
    if "rss" in parts:
        bench_peak_rss(peers=peers)
    print(f"(client process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB peak)  "
          f"total {time.perf_counter() - started:.0f} s, load average now {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
