"""Provider batch jobs: requests rendered and uploaded per second, and which of the two is the bottleneck.

    .venv/bin/python bench/bench_batch_jobs.py [--docs 10000] [--repeats 3]

``submit_batch`` over N short documents against FakeLLMServer's Files/Batches APIs, the server in a separate
process (so only the client's CPU is measured). The split comes from ``job.submit_timings``: our rendering
(the Prompter's plan, renderer and request body per document), encoding the JSONL lines, the upload (a
multipart POST through the Prompter's own transport, aiohttp, over loopback; the fake's own multipart parsing
is reported and subtracted) and the batch creation. Every figure is measured in this one run; the median
of ``--repeats`` submissions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parent.parent

SERVER = """
import sys, json
from dspydantic.testing import FakeLLMServer
srv = FakeLLMServer().start()
srv.respond_from_schema()
print(srv.port, flush=True)
for line in sys.stdin:
    print(json.dumps({"upload_parse_s": srv.batches.upload_parse_s, "uploads": len(srv.batches.uploads)}), flush=True)
"""


class Invoice(BaseModel):
    vendor: str = Field(description="Company that issued the invoice")
    total: float = Field(description="Grand total including tax")
    currency: str


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    assert server.stdout is not None and server.stdin is not None
    port = int(server.stdout.readline())

    def server_stats() -> dict[str, float]:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.write("stats\n")
        server.stdin.flush()
        stats: dict[str, float] = json.loads(server.stdout.readline())
        return stats

    from dspydantic import Prompter

    prompter = Prompter(model=Invoice, model_id="openai/gpt-4o-mini", api_base=f"http://127.0.0.1:{port}/v1",
                        api_key="sk-bench")
    docs = [f"Invoice {i} from Vendor {i % 97} GmbH, Hauptstr. {i % 300}. Total due: {i},50 EUR." for i in
            range(args.docs)]
    rows: list[dict[str, float]] = []
    try:
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as jobs:  # no earlier job records: every request is uploaded
                os.environ["DSPYDANTIC_BATCH_DIR"] = jobs
                before = server_stats()["upload_parse_s"]
                started = time.perf_counter()
                job = prompter.submit_batch(docs)
                wall = time.perf_counter() - started
                timings = dict(job.submit_timings)
                timings["fake_parse_s"] = server_stats()["upload_parse_s"] - before
                timings["wall_s"] = wall
                assert timings["uploaded"] == args.docs
                rows.append(timings)
    finally:
        server.stdin.close()
        server.wait(timeout=10)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    n, mb = args.docs, med("bytes") / 1e6
    render, encode, upload, parse, create = (
        med(k) for k in ("render_s", "encode_s", "upload_s", "fake_parse_s", "create_s")
    )
    ours, ours_cpu = render + encode, med("render_cpu_s") + med("encode_cpu_s")
    transfer = upload - parse

    def row(label: str, seconds: float) -> str:
        return f"  {label:42s} {seconds:6.3f} s {n / seconds:8.0f} req/s {mb / seconds:7.1f} MB/s"

    print(f"{n} documents -> {n} requests, one {mb:.1f} MB JSONL file ({med('bytes') / n:.0f} bytes/request); "
          f"median of {len(rows)} submissions; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  making the Files/Batches client (the backend's transport): {rows[0]['client_s'] * 1e3:.2f} ms")
    print(row("rendering (plan + renderer + body), wall", render))
    print(row("encoding the JSONL lines, wall", encode))
    print(row("ours = rendering + encoding, wall", ours))
    print(row("ours in CPU time (on an idle core)", ours_cpu))
    print(row("upload over loopback (our transport)", upload))
    print(row("  without the fake's multipart parsing", transfer))
    print(f"  creating the batch (the fake validates every line here) {create:6.3f} s")
    print(f"  submit_batch wall time {med('wall_s'):.3f} s")
    for label, seconds in (("wall", ours), ("CPU", ours_cpu)):
        print(f"ours ({label}) produces {mb / seconds:.1f} MB/s = {mb / seconds * 8:.0f} Mbit/s: the upload is the "
              "bottleneck on any slower uplink")
    for mbit in (50, 100, 1000):
        seconds = mb * 8 / mbit
        print(f"  at {mbit:4d} Mbit/s the upload takes {seconds:6.2f} s = {seconds / ours:5.2f}x ours (wall), "
              f"{seconds / ours_cpu:5.2f}x ours (CPU)")


if __name__ == "__main__":
    main()
