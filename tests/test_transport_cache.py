"""The cache layer never makes a failure permanent, never loses a paid answer, and keys on every setting.

- An answer that did not validate (or was cut by the token limit) is not stored: once the provider recovers,
  the same document makes a new call, in this process and after a restart (a new process on the same file).
- A corrupt cache file or an unwritable cache directory: one warning, the call still returns (the LM paid
  once, its answer kept), never a raw ``sqlite3`` error.
- Two Prompters that differ only in a model setting (``extra_body``, ``top_p``, ``seed``...) share nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dspydantic
from dspydantic import ExtractionError, Prompter
from dspydantic.testing import FakeLLMServer, Reply

from ._verbs import GOOD, KEY, SINGLE, Bill, call, describe

ROOT = Path(__file__).resolve().parent.parent


def make(srv: FakeLLMServer, cache: Any, **kw: Any) -> Prompter:
    kw.setdefault("max_retries", 0)
    return Prompter(Bill, "openai/fake-model", api_base=srv.base_url, api_key=KEY, cache=cache, **kw)


# Run by a child as root: drop the capabilities that let root write through file permissions, so a
# read-only directory is read-only for it too.
_DROP_DAC = """
import ctypes
class _Hdr(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
_libc = ctypes.CDLL(None, use_errno=True)
_hdr, _data = _Hdr(0x20080522, 0), (_Data * 2)()
_libc.capget(ctypes.byref(_hdr), _data)
_data[0].effective &= ~0b1110 & 0xFFFFFFFF  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
_data[0].permitted &= ~0b1110 & 0xFFFFFFFF
_libc.capset(ctypes.byref(_hdr), _data)
"""


def in_new_process(base_url: str, cache: Path, text: str, *, drop_dac: bool = False) -> dict[str, Any]:
    """Run one extraction in a fresh interpreter (a "restart") on the same dspydantic sources as this test;
    reports the vendor or the error type, and the warnings it saw."""
    code = (_DROP_DAC if drop_dac else "") + f"""
import json, logging, warnings
from pathlib import Path
from dspydantic import Prompter
from tests._verbs import Bill
out = {{}}
if {drop_dac!r}:
    try:
        (Path({str(cache)!r}) / "probe").write_text("x")
        out["skip"] = "cannot make a directory read-only for this process"
    except PermissionError:
        pass
records = []
class H(logging.Handler):
    def emit(self, r): records.append(r.getMessage())
logging.getLogger().addHandler(H(level=logging.WARNING))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        p = Prompter(Bill, "openai/fake-model", api_base={base_url!r}, api_key="k", cache={str(cache)!r}, max_retries=0)
        out["vendor"] = p.run({text!r}).vendor
    except Exception as exc:
        out["error"] = f"{{type(exc).__module__}}.{{type(exc).__name__}}: {{exc}}"
out["warnings"] = [str(w.message) for w in caught] + records
print(json.dumps(out))
"""
    env = dict(os.environ)
    src = str(Path(dspydantic.__file__).resolve().parent.parent)  # the sources under test
    env["PYTHONPATH"] = os.pathsep.join([src, str(ROOT)])
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=60
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


# -- failures are not cached --------------------------------------------------------------------------------
@pytest.mark.parametrize("verb", SINGLE)
def test_an_answer_that_did_not_validate_is_not_cached(srv: FakeLLMServer, tmp_path: Path, verb: str) -> None:
    cache = tmp_path / "c"
    srv.add_response("Sorry, the service is degraded.")
    p = make(srv, cache)
    assert isinstance(call(p, verb, "doc A"), ExtractionError)
    assert srv.request_count == 1
    srv.set_responder(lambda body: GOOD)  # the provider recovers
    out = call(p, verb, "doc A")
    assert isinstance(out, Bill), f"the failure was served from the cache: {describe(out)}"
    assert srv.request_count == 2
    assert isinstance(call(p, verb, "doc A"), Bill) and srv.request_count == 2  # the good answer is cached


def test_a_failure_is_not_cached_across_a_restart(srv: FakeLLMServer, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    srv.add_response("Sorry, the service is degraded.")
    first = in_new_process(srv.base_url, cache, "doc B")
    assert "ExtractionError" in first.get("error", ""), first
    assert srv.request_count == 1
    srv.set_responder(lambda body: GOOD)
    second = in_new_process(srv.base_url, cache, "doc B")
    assert second.get("vendor") == "Acme", second
    assert srv.request_count == 2


@pytest.mark.parametrize("verb", SINGLE)
def test_output_cut_by_the_token_limit_is_not_cached(srv: FakeLLMServer, tmp_path: Path, verb: str) -> None:
    srv.set_responder(lambda body: Reply('{"vendor": "Ac', finish_reason="length"))
    p = make(srv, tmp_path / "c", max_tokens=50)
    out = call(p, verb, "doc C")
    assert isinstance(out, ExtractionError), describe(out)
    paid = srv.request_count
    assert paid >= 1
    srv.set_responder(lambda body: GOOD)
    assert isinstance(call(p, verb, "doc C"), Bill)
    assert srv.request_count == paid + 1
    restarted = make(srv, tmp_path / "c", max_tokens=50)
    assert isinstance(call(restarted, verb, "doc C"), Bill)
    assert srv.request_count == paid + 1


# -- a broken cache degrades to no cache, with one warning ------------------------------------------------------
def cache_warnings(caught: list[warnings.WarningMessage], caplog: pytest.LogCaptureFixture) -> list[str]:
    said = [str(w.message) for w in caught]
    said += [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    return said


@pytest.mark.parametrize("verb", SINGLE)
def test_corrupt_cache_file_warns_once_and_every_call_returns(
    srv: FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, verb: str
) -> None:
    cache = tmp_path / "corrupt"
    cache.mkdir()
    (cache / "requests.sqlite").write_bytes(b"this is not an SQLite database\n" * 200)
    srv.set_responder(lambda body: GOOD)
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = make(srv, str(cache))
        outs = [call(p, verb, text) for text in ("doc 1", "doc 2", "doc 3")]
    assert all(isinstance(o, Bill) for o in outs), [describe(o) for o in outs]
    assert not any(isinstance(o, sqlite3.Error) for o in outs)
    assert srv.request_count == 3, "each document paid exactly once"
    said = cache_warnings(caught, caplog)
    assert len(said) == 1, f"expected one warning about the cache, got {said}"


@pytest.mark.parametrize("verb", SINGLE)
def test_cache_path_that_cannot_be_created_warns_once(
    srv: FakeLLMServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, verb: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache directory should go")
    srv.set_responder(lambda body: GOOD)
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = make(srv, str(blocker / "cache"))
        outs = [call(p, verb, text) for text in ("doc 1", "doc 2")]
    assert all(isinstance(o, Bill) for o in outs), [describe(o) for o in outs]
    assert srv.request_count == 2
    assert len(cache_warnings(caught, caplog)) == 1


@pytest.fixture()
def readonly_cache(tmp_path: Path) -> Iterator[Path]:
    """A cache directory holding a valid (empty) cache file, both read-only."""
    from dspydantic._cache import SQLiteCache

    cache = tmp_path / "ro"
    SQLiteCache(cache)
    cache_file = cache / "requests.sqlite"
    for extra in cache.iterdir():
        if extra != cache_file:
            extra.unlink()
    cache_file.chmod(0o444)
    cache.chmod(0o555)
    yield cache
    cache.chmod(0o755)
    cache_file.chmod(0o644)


def test_read_only_cache_keeps_the_paid_answer(srv: FakeLLMServer, readonly_cache: Path) -> None:
    """The issue's case: the LM was paid, then the answer thrown away on a raw sqlite3 error."""
    srv.set_responder(lambda body: GOOD)
    out = in_new_process(srv.base_url, readonly_cache, "doc RO", drop_dac=os.geteuid() == 0)
    if "skip" in out:
        pytest.skip(out["skip"])
    assert out.get("vendor") == "Acme", out
    assert srv.request_count == 1, "the LM was paid once and its answer kept"
    assert len(out["warnings"]) == 1, out["warnings"]


# -- the key includes every setting ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "a", "b"),
    [
        ("extra_body", {"top_p": 0.1}, {"top_p": 0.9}),
        ("top_p", 0.5, 0.6),
        ("seed", 1, 2),
        ("stop", ["END"], ["STOP"]),
        ("presence_penalty", 0.0, 0.5),
        ("frequency_penalty", 0.0, 0.5),
    ],
)
def test_prompters_differing_in_one_setting_share_no_entries(
    srv: FakeLLMServer, tmp_path: Path, name: str, a: Any, b: Any
) -> None:
    srv.set_responder(lambda body: GOOD)
    cache = tmp_path / "c"
    assert isinstance(call(make(srv, cache, **{name: a}), "run", "same doc"), Bill)
    assert isinstance(call(make(srv, cache, **{name: b}), "run", "same doc"), Bill)
    assert srv.request_count == 2, f"{name}={b!r} was served the answer cached for {name}={a!r}"
    assert isinstance(call(make(srv, cache, **{name: a}), "run", "same doc"), Bill)
    assert srv.request_count == 2, "the same settings must hit the cache"


def test_async_cache_hit_and_miss(srv: FakeLLMServer, tmp_path: Path) -> None:
    srv.set_responder(lambda body: GOOD)
    cache = tmp_path / "c"
    a = make(srv, cache, extra_body={"top_p": 0.1})
    b = make(srv, cache, extra_body={"top_p": 0.9})

    async def main() -> None:
        await a.apredict("doc")
        await b.apredict("doc")
        await a.apredict("doc")

    asyncio.run(main())
    assert srv.request_count == 2
