"""Helpers for the tests that use the local services (Redis, RabbitMQ, PostgreSQL) and real worker processes.

Each service is probed once; a test that needs an absent one is skipped with the reason. Every run uses names
of its own (Redis db 11, queue names and PostgreSQL table prefixes with a random suffix) so that parallel runs
and other test suites do not collide.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

REDIS_URL = os.environ.get("DSPYDANTIC_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
AMQP_URL = os.environ.get("DSPYDANTIC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
PG_URL = os.environ.get("DSPYDANTIC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

_probed: dict[tuple[str, int], bool] = {}


def _listening(host: str, port: int) -> bool:
    if (host, port) not in _probed:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                _probed[(host, port)] = True
        except OSError:
            _probed[(host, port)] = False
    return _probed[(host, port)]


def need_redis() -> str:
    if not _listening("127.0.0.1", 6379):
        pytest.skip("Redis is not listening on 127.0.0.1:6379")
    pytest.importorskip("redis", reason="the redis client is not installed ([celery] extra)")
    return REDIS_URL


def need_rabbitmq() -> str:
    if not _listening("127.0.0.1", 5672):
        pytest.skip("RabbitMQ is not listening on 127.0.0.1:5672")
    return AMQP_URL


def need_postgres() -> str:
    if not _listening("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not listening on 127.0.0.1:5432")
    pytest.importorskip("psycopg", reason="psycopg is not installed (the PostgreSQL driver)")
    return PG_URL


def purge_redis(url: str, queue: str) -> None:
    """Remove every key a run left for ``queue`` (the queue and kombu's bindings for it) from our Redis db."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"*{queue}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def unique(tag: str) -> str:
    return f"{tag}_{uuid.uuid4().hex[:10]}"


def drop_tables(url: str, prefix: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            for name in ("documents", "batch_jobs"):
                conn.execute(sa.text(f'DROP TABLE IF EXISTS "{prefix}{name}"'))
    finally:
        engine.dispose()


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout's sources first on the path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)}
    env.update(extra)
    return env


CLI = [sys.executable, "-c", "import sys; from dspydantic.cli import main; sys.exit(main())"]


def run_cli(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env=child_env(**env))


def children(pid: int) -> list[int]:
    """Pids of the direct children of ``pid`` (read from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return sorted(out)


class Worker:
    """``dspydantic worker ...`` in its own process group, logging to a file; stopped (or killed) at exit."""

    def __init__(self, args: list[str], logfile: Path, **env: str) -> None:
        self.logfile = logfile
        self.args = args
        self.env = child_env(**env)
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 90) -> Worker:
        quiet = ["--celery-arg=--without-mingle", "--celery-arg=--without-gossip", "--celery-arg=--without-heartbeat"]
        self.errfile = self.logfile.with_suffix(".stderr")
        with open(self.errfile, "w") as err:  # a file, not a pipe: a pipe nobody reads could block the worker
            self.proc = subprocess.Popen(
                [*CLI, "worker", *self.args, "--logfile", str(self.logfile), *quiet],
                stdout=subprocess.DEVNULL, stderr=err, text=True, env=self.env, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the worker exited with {self.proc.returncode}:\n"
                                     f"{self.errfile.read_text(errors='replace')}\n{self.log()}")
            if " ready." in self.log():
                return self
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"the worker did not get ready in {timeout} s:\n{self.log()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared in the worker's log:\n{self.log()}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the whole worker: the main process and its pool (a crashed machine)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)  # warm shutdown
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def celery_client(broker: str, backend: str) -> Iterator[object]:
    from celery import Celery

    app = Celery("dspydantic-tests", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, result_expires=600)
    try:
        yield app
    finally:
        app.close()


def pdf_with_text(lines: list[str]) -> bytes:
    """A one-page PDF whose text layer holds ``lines`` (Helvetica), assembled with a correct xref table."""
    content = "BT /F1 11 Tf 72 740 Td 14 TL " + " ".join(
        "(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") '" for line in lines
    ) + " ET"
    stream = content.encode("latin-1")
    bodies = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    pdf = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(bodies, start=1):
        offsets.append(len(pdf))
        pdf += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref_at = len(pdf)
    pdf += f"xref\n0 {len(bodies) + 1}\n0000000000 65535 f \n".encode()
    pdf += b"".join(f"{off:010d} 00000 n \n".encode() for off in offsets)
    pdf += f"trailer\n<< /Size {len(bodies) + 1} /Root 1 0 R >>\nstartxref\n{xref_at}\n%%EOF\n".encode()
    return bytes(pdf)
