"""Celery worker throughput: documents per second through a broker with 1, 2 and 4 worker processes.

    .venv/bin/python bench/bench_workers.py                      # fake LLM answering in 100 ms; Redis and RabbitMQ
    flock /tmp/dspydantic-llama.lock .venv/bin/python bench/bench_workers.py --local-only   # the embedded model

Each figure starts a real ``dspydantic worker`` (prefork pool, ``--concurrency N``), warms every pool process
up (each loads the prompter after the fork), then sends distinct documents by task name and waits for every
result: rate = documents / (first send -> last result). Ratios are measured in this one run: a run of N
processes against N x the one-process rate of the same broker (target >= 0.8), and against the ideal N / 0.1 s.

The embedded-model part runs the demo's invoices through ``model_id="local"`` with 1 and 2 worker processes on
this machine's cores (threads per process chosen by the worker: cores // processes), and once with 2
processes forced to all cores each (``DSPYDANTIC_LOCAL_THREADS``) to show what the sizing avoids.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXTRA_WORKER_ARGS: list[str] = []
CLI = [sys.executable, "-c", "import sys; from dspydantic.cli import main; sys.exit(main())"]

SERVER = """
import sys
from dspydantic.testing import FakeLLMServer
srv = FakeLLMServer(latency=float(sys.argv[1])).start()
srv.respond_from_schema({"vendor": "Acme GmbH"})
print(srv.base_url, flush=True)
sys.stdin.read()
"""


def env(**extra: str) -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH"))
                                                       if p)}
    out.setdefault("OPENAI_API_KEY", "sk-bench")
    out.update(extra)
    return out


class Worker:
    def __init__(self, args: list[str], logfile: Path, extra_env: dict[str, str]) -> None:
        self.logfile = logfile
        e = env(**extra_env)
        if "DSPYDANTIC_LOCAL_THREADS" not in extra_env:
            e.pop("DSPYDANTIC_LOCAL_THREADS", None)
        quiet = ["--celery-arg=--without-mingle", "--celery-arg=--without-gossip", "--celery-arg=--without-heartbeat"]
        errfile = logfile.with_suffix(".stderr")
        with open(errfile, "w") as err:
            self.proc = subprocess.Popen([*CLI, "worker", *args, "--logfile", str(logfile), "--loglevel", "INFO",
                                          *quiet], stdout=subprocess.DEVNULL, stderr=err, env=e,
                                         start_new_session=True)
        deadline = time.monotonic() + 120
        while " ready." not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"worker did not start:\n{errfile.read_text(errors='replace')}\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def run_batch(app: Any, queue: str, texts: list[str], timeout: float) -> float:
    started = time.perf_counter()
    pending = [app.send_task("dspydantic.extract", kwargs={"prompter": "invoice", "text": t}, queue=queue)
               for t in texts]
    for r in pending:
        out = r.get(timeout=timeout)
        if out.get("error"):
            raise SystemExit(f"a task failed: {out['error']}")
    return time.perf_counter() - started


def measure(broker: str, backend: str, saved: Path, processes: int, texts: list[str], warmup: list[str],
            workdir: Path, timeout: float, extra_env: dict[str, str] | None = None) -> tuple[float, str]:
    from celery import Celery

    queue = f"bench_{uuid.uuid4().hex[:8]}"
    w = Worker([f"invoice={saved}", "--broker", broker, "--backend", backend, "--concurrency", str(processes),
                "--queues", queue, *EXTRA_WORKER_ARGS], workdir / f"{queue}.log", extra_env or {})
    app = Celery("bench", broker=broker, backend=backend, set_as_current=False)
    try:
        run_batch(app, queue, warmup, timeout)  # every pool process has loaded the prompter and called the LM
        elapsed = run_batch(app, queue, texts, timeout)
    finally:
        w.stop()
        with contextlib.suppress(Exception), app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        if broker.startswith("redis"):  # kombu's binding keys for the queue too
            with contextlib.suppress(Exception):
                import redis

                client = redis.Redis.from_url(broker)
                keys = list(client.scan_iter(match=f"*{queue}*"))
                if keys:
                    client.delete(*keys)
                client.close()
        app.close()
    threads = next((line.split("worker process: ", 1)[1] for line in w.log().splitlines()
                    if "local model threads per worker process" in line), "?")
    return len(texts) / elapsed, threads


def fake_part(args: argparse.Namespace, workdir: Path) -> None:
    from pydantic import BaseModel

    from dspydantic import Prompter

    class Invoice(BaseModel):
        vendor: str
        total: float
        currency: str

    server = subprocess.Popen([sys.executable, "-c", SERVER, str(args.latency)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env())
    assert server.stdout is not None
    base_url = server.stdout.readline().strip()
    saved = workdir / "invoice"
    Prompter(Invoice, model_id="openai/bench", api_base=base_url, lm_retries=0).save(saved)
    brokers = {"redis": args.redis, "rabbitmq": args.amqp}
    print(f"fake LLM answering in {args.latency * 1000:.0f} ms; {args.docs_per_process} documents per worker "
          f"process; load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'broker':<9} {'processes':>9} {'docs/s':>8} {'vs N x one':>10} {'vs ideal':>9}")
    try:
        for name in args.brokers.split(","):
            one = None
            for n in [int(x) for x in args.processes.split(",")]:
                texts = [f"Invoice {uuid.uuid4().hex} from Acme GmbH, total {i} EUR"
                         for i in range(args.docs_per_process * n)]
                warm = [f"warm-up {uuid.uuid4().hex}" for _ in range(2 * n)]
                rate, _ = measure(brokers[name], args.backend, saved, n, texts, warm, workdir, 120)
                one = rate if n == 1 else one
                vs = f"{rate / (n * one):.2f}" if one else "-"
                print(f"{name:<9} {n:>9} {rate:>8.2f} {vs:>10} {rate / (n / args.latency):>9.2f}", flush=True)
    finally:
        server.terminate()
        server.wait()


def local_part(args: argparse.Namespace, workdir: Path) -> None:
    from dspydantic import Prompter
    from dspydantic.demo import Invoice, load_examples

    examples = load_examples()
    saved = workdir / "local_invoice"
    Prompter(Invoice, model_id="local").save(saved)
    texts = [str(e.text) for e in examples[: args.local_docs]]
    warm = [str(e.text) for e in examples[args.local_docs: args.local_docs + 4]]
    print(f"embedded model (Qwen2.5-0.5B Q4_K_M), {len(texts)} demo invoices per figure, {os.cpu_count()} cores; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'processes':>9} {'threads/process':>16} {'docs/s':>8} {'vs one process':>15}")
    one = None
    runs: list[tuple[int, dict[str, str]]] = [(1, {}), (2, {}), (2, {"DSPYDANTIC_LOCAL_THREADS": str(os.cpu_count())})]
    for n, extra in runs:
        rate, threads = measure(args.redis, args.backend, saved, n, texts, warm[: 2 * n], workdir, 600, extra)
        one = rate if one is None else one
        label = threads.split(" ", 1)[0] + (" (forced)" if extra else "")
        print(f"{n:>9} {label:>16} {rate:>8.3f} {rate / one:>15.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    ap.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672//")
    ap.add_argument("--backend", default="redis://127.0.0.1:6379/11")
    ap.add_argument("--brokers", default="redis,rabbitmq")
    ap.add_argument("--processes", default="1,2,4")
    ap.add_argument("--docs-per-process", type=int, default=25)
    ap.add_argument("--latency", type=float, default=0.1)
    ap.add_argument("--local", action="store_true", help="also the embedded model (run under the llama.cpp lock)")
    ap.add_argument("--local-only", action="store_true")
    ap.add_argument("--local-docs", type=int, default=8)
    ap.add_argument("--celery-arg", action="append", default=[], help="passed to every worker (repeatable)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: every started worker is stopped
    EXTRA_WORKER_ARGS.extend(f"--celery-arg={a}" for a in args.celery_arg)
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        if not args.local_only:
            fake_part(args, Path(tmp))
        if args.local or args.local_only:
            local_part(args, Path(tmp))
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
