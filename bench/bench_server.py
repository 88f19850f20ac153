"""Load test of ``dspydantic serve``: N concurrent clients for a bounded time, loopback only.

    python bench/bench_server.py                      # 50 clients, 60 s, fake LLM answering in 100 ms
    python bench/bench_server.py --duration 10 --clients 20 --workers 2

Three processes: the fake OpenAI-compatible LLM (``dspydantic.testing.FakeLLMServer``, a fixed latency per
answer), ``dspydantic serve`` on a saved prompter pointed at it, and this one (asyncio clients on aiohttp, each
sending its next request as soon as the last one answered). Prints the throughput, the latency percentiles,
the ideal (clients / LM latency) and their ratio, and every non-2xx status or connection error. Exits 1 on
any server error. Everything listens on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OPENAI_API_KEY"] = "sk-bench-dummy"
    env.pop("DSPYDANTIC_API_TOKEN", None)
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_fake_llm(latency: float, port_file: str) -> None:
    """(a child process) the fake LLM, answering every structured request with a valid example."""
    from dspydantic.testing import FakeLLMServer

    with FakeLLMServer(latency=latency) as srv:
        srv.respond_from_schema({"vendor": "Acme"})
        Path(port_file).write_text(str(srv.port))
        signal.sigwait({signal.SIGTERM, signal.SIGINT})


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its children (Linux /proc; 0 elsewhere)."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = 0.0
    pids = [pid]
    try:
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return 0.0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, IndexError, ValueError):
            pass
    return total


def _wait_for(path: Path, proc: subprocess.Popen[bytes], what: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.05)
    raise SystemExit(f"{what} did not start within 60 s")


async def _healthy(url: str) -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        for _ in range(600):
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("serve did not answer /healthz within 60 s")


async def load(url: str, clients: int, duration: float) -> dict[str, object]:
    import aiohttp  # a lighter client than httpx: the clients must not be what limits the figure

    latencies: list[float] = []
    statuses: dict[str, int] = {}
    body = {"text": "Invoice from Acme GmbH, total 1.200,50 EUR, due 2024-01-31"}
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base_url=url, connector=connector, timeout=timeout) as http:
        stop_at = time.perf_counter() + duration

        async def client() -> None:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    async with http.post("/extract", json=body) as r:
                        await r.read()
                        key = str(r.status)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    key = type(exc).__name__
                latencies.append(time.perf_counter() - t0)
                statuses[key] = statuses.get(key, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return {"latencies": latencies, "statuses": statuses, "elapsed": elapsed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    ap.add_argument("--latency", type=float, default=0.1, help="the fake LLM's answer time (default 0.1 s)")
    ap.add_argument("--workers", type=int, default=1, help="serve --workers")
    ap.add_argument("--fake-llm", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fake_llm:
        run_fake_llm(args.latency, args.fake_llm)
        return 0

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        port_file = Path(tmp) / "llm.port"
        llm = subprocess.Popen([sys.executable, __file__, "--fake-llm", str(port_file), "--latency",
                                str(args.latency)], env=_env())
        serve = None
        try:
            llm_port = _wait_for(port_file, llm, "the fake LLM")
            sys.path.insert(0, str(ROOT / "src"))
            from pydantic import BaseModel, Field

            from dspydantic import Prompter

            class Invoice(BaseModel):
                vendor: str = Field(description="Company that issued the invoice")
                total: float = Field(description="Grand total including tax")
                currency: str

            Prompter(model=Invoice, model_id="openai/gpt-4o-mini", api_base=f"http://127.0.0.1:{llm_port}/v1",
                     api_key="sk-bench-dummy").save(Path(tmp) / "invoice")
            port = _free_port()
            serve = subprocess.Popen(
                [sys.executable, "-m", "dspydantic", "serve", str(Path(tmp) / "invoice"), "--port", str(port),
                 "--workers", str(args.workers), "--log-level", "warning"], env=_env(),
            )
            url = f"http://127.0.0.1:{port}"
            asyncio.run(_healthy(url))
            cpu0 = (_cpu_seconds(serve.pid), _cpu_seconds(llm.pid), time.process_time())
            out = asyncio.run(load(url, args.clients, args.duration))
            cpu1 = (_cpu_seconds(serve.pid), _cpu_seconds(llm.pid), time.process_time())
        finally:
            for proc in (serve, llm):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    load_after = os.getloadavg()
    lat = sorted(out["latencies"])  # type: ignore[arg-type]
    statuses: dict[str, int] = out["statuses"]  # type: ignore[assignment]
    elapsed: float = out["elapsed"]  # type: ignore[assignment]
    n = len(lat)
    ok = statuses.get("200", 0)
    server_errors = sum(c for s, c in statuses.items() if not s.isdigit() or int(s) >= 500)
    ideal = args.clients / args.latency
    throughput = n / elapsed
    q = statistics.quantiles(lat, n=100) if n >= 2 else [lat[0] * 1.0] * 99
    report = {
        "clients": args.clients,
        "duration_s": round(elapsed, 1),
        "workers": args.workers,
        "lm_latency_s": args.latency,
        "requests": n,
        "ok": ok,
        "server_errors": server_errors,
        "statuses": statuses,
        "throughput_rps": round(throughput, 1),
        "ideal_rps": round(ideal, 1),
        "throughput_vs_ideal": round(throughput / ideal, 3),
        "p50_ms": round(q[49] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "p50_vs_lm_latency": round(q[49] / args.latency, 2),
        # CPU per request of each process: what the throughput is bound by when the cores are shared
        "cpu_ms_per_request": {
            "serve": round((cpu1[0] - cpu0[0]) / max(n, 1) * 1000, 2),
            "fake_llm": round((cpu1[1] - cpu0[1]) / max(n, 1) * 1000, 2),
            "clients": round((cpu1[2] - cpu0[2]) / max(n, 1) * 1000, 2),
        },
        "load_avg_1m_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))
    return 1 if server_errors or not ok else 0


if __name__ == "__main__":
    sys.exit(main())
