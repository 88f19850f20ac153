"""A saved prompter directory may come from someone else: every attack on ``Prompter.load`` we know of.

Each test tampers with a real directory written by ``Prompter.save`` the way an attacker who controls the
folder can (rewriting a file and its checksum in the manifest, adding links, FIFOs, odd values), then loads
it. Where a request would be sent, it goes over real sockets to ``FakeLLMServer``: the servers' logs show
where documents and keys went. Nothing of the library is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from dspydantic import PersistenceError, Prompter
from dspydantic._render import Demo
from dspydantic._schema import fingerprint
from dspydantic.errors import ConfigurationError
from dspydantic.testing import FakeLLMServer

from ._support import SRC

FIXTURES = Path(__file__).parent / "fixtures"
ENV_KEY = "sk-env-key-must-not-travel"
CALLER_KEY = "sk-caller-key-A"


class Ticket(BaseModel):
    route: str = Field(description="From and to")
    price: float
    seats: list[str] = []


ANSWER = {"route": "Berlin - Hamburg", "price": 49.9, "seats": ["12"]}


def tiny_png(rgb: tuple[int, int, int]) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" + bytes(rgb)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


GREEN = tiny_png((0, 128, 0))
GREEN_URL = "data:image/png;base64," + base64.b64encode(GREEN).decode()


def two_servers() -> Iterator[tuple[FakeLLMServer, FakeLLMServer]]:
    with FakeLLMServer() as a, FakeLLMServer() as b:
        a.set_responder(lambda body: ANSWER)
        b.set_responder(lambda body: ANSWER)
        yield a, b


servers = pytest.fixture(two_servers)


@pytest.fixture()
def srv() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        server.set_responder(lambda body: ANSWER)
        yield server


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def save(target: Path, endpoint: str, **kwargs: Any) -> Path:
    """A prompter with prompts and two demos (one with an image), saved as its author would."""
    p = Prompter(Ticket, "openai/fake", api_base=endpoint, api_key="sk-author-key", **kwargs)
    p.state = p.state.replace(
        system_prompt="You read train tickets.",
        demos=[Demo("Berlin - Hamburg, 49.90, seat 12", ANSWER),
               Demo([{"type": "text", "text": "Scanned ticket"},
                     {"type": "image_url", "image_url": {"url": GREEN_URL}}],
                    {"route": "Bonn - Köln", "price": 9.5, "seats": []})],
    )
    p.save(target)
    return target


def manifest(d: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((d / "dspydantic.json").read_text())
    return data


def write_manifest(d: Path, data: dict[str, Any]) -> None:
    (d / "dspydantic.json").write_text(json.dumps(data))


def relist(d: Path, rel: str, data: bytes) -> None:
    """What an attacker who controls the folder can do: replace a file and record its checksum and size."""
    path = d / rel
    if not path.is_symlink():
        path.write_bytes(data)
    m = manifest(d)
    m["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    write_manifest(d, m)


def edit_json(d: Path, rel: str, change: Callable[[Any], Any]) -> None:
    value = json.loads((d / rel).read_bytes())
    relist(d, rel, json.dumps(change(value)).encode())


# ==================================================================================================
# endpoint and credentials: from the caller or the environment only


def test_the_manifests_endpoint_gets_no_request_and_no_key(
    servers: tuple[FakeLLMServer, FakeLLMServer], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    a, b = servers
    d = save(tmp_path / "p", a.base_url)
    m = manifest(d)
    m["lm"]["api_base"] = b.base_url  # the directory now names server B (the manifest itself is not hashed)
    write_manifest(d, m)

    # the environment points at A with a key: A gets the documents and the key, B nothing
    clean_env.setenv("OPENAI_BASE_URL", a.base_url)
    clean_env.setenv("OPENAI_API_KEY", ENV_KEY)
    assert Prompter.load(d, model=Ticket).run("Berlin - Hamburg, 49.90") == Ticket(**ANSWER)
    # the caller's own endpoint and key (no environment): the same
    clean_env.delenv("OPENAI_BASE_URL")
    q = Prompter.load(d, model=Ticket, api_base=a.base_url, api_key=CALLER_KEY)
    assert q.run("Berlin - Hamburg, 49.90") == Ticket(**ANSWER)
    assert [r.headers["authorization"] for r in a.chat_requests] == [f"Bearer {ENV_KEY}", f"Bearer {CALLER_KEY}"]
    # neither endpoint nor key given: the default endpoint, with a warning that says how to use B
    with pytest.warns(UserWarning, match="trust_saved_endpoint=True"):
        plain = Prompter.load(d, model=Ticket)
    assert plain.backend.base_url == "https://api.openai.com/v1"  # type: ignore[attr-defined]
    assert b.request_count == 0 and b.requests == []


def test_trusting_the_saved_endpoint_never_sends_it_a_key_from_elsewhere(
    servers: tuple[FakeLLMServer, FakeLLMServer], tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    a, b = servers
    d = save(tmp_path / "p", b.base_url)
    clean_env.setenv("OPENAI_API_KEY", ENV_KEY)
    q = Prompter.load(d, model=Ticket, trust_saved_endpoint=True)  # B, and no key: not the environment's
    q.run("Berlin - Hamburg, 49.90")
    assert len(b.chat_requests) == 1 and "authorization" not in b.chat_requests[0].headers
    r = Prompter.load(d, model=Ticket, trust_saved_endpoint=True, api_key="sk-for-B")  # the key given for B
    r.run("Berlin - Hamburg, 49.90")
    assert b.chat_requests[1].headers["authorization"] == "Bearer sk-for-B"
    assert ENV_KEY not in json.dumps([dict(x.headers) for x in b.requests])
    with pytest.raises(ConfigurationError, match="serves 'openai/fake'"):  # another model: not to B
        Prompter.load(d, model=Ticket, model_id="openai/other", trust_saved_endpoint=True)
    assert a.request_count == 0


@pytest.mark.parametrize(
    "model_id", ["local:/etc/passwd", "local/../../model.gguf", "local/model.gguf", "huggingface/https://evil.example/m",
                 "openai/../x", "/abs/path", "openai/fake\nx"],
)
def test_a_saved_model_id_naming_a_file_or_a_url_is_refused(
    srv: FakeLLMServer, tmp_path: Path, clean_env: pytest.MonkeyPatch, model_id: str
) -> None:
    d = save(tmp_path / "p", srv.base_url)
    m = manifest(d)
    m["lm"]["model_id"] = model_id
    write_manifest(d, m)
    with pytest.raises(PersistenceError, match="Pass model_id="):
        Prompter.load(d, model=Ticket, api_base=srv.base_url, api_key=CALLER_KEY)
    # the caller's model id is the caller's choice
    q = Prompter.load(d, model=Ticket, model_id="openai/fake", api_base=srv.base_url, api_key=CALLER_KEY)
    assert q.run("x") == Ticket(**ANSWER)


# ==================================================================================================
# only regular files inside the directory, listed and hashed in the manifest


class OpenLog:
    """Every file open (``open`` audit events: builtins.open, os.open) while recording."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.on = False

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if self.on and event == "open" and args and isinstance(args[0], str | bytes | os.PathLike):
            self.paths.append(os.fsdecode(args[0]))


_OPENS = OpenLog()
sys.addaudithook(_OPENS)


def load_recording_opens(d: Path, **kwargs: Any) -> tuple[BaseException | None, list[str]]:
    _OPENS.paths, _OPENS.on = [], True
    try:
        Prompter.load(d, model=Ticket, **kwargs)
    except BaseException as exc:
        return exc, list(_OPENS.paths)
    finally:
        _OPENS.on = False
    return None, list(_OPENS.paths)


def test_a_symlinked_demo_file_is_refused_and_its_target_never_opened(srv: FakeLLMServer, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(b"\x89PNG\r\n\x1a\n" + b"TOP SECRET CONTENT " * 10)
    d = save(tmp_path / "p", srv.base_url)
    error, opened = load_recording_opens(d, api_base=srv.base_url, api_key=CALLER_KEY)
    assert error is None and [p for p in opened if p.endswith("0001.png")]  # the log does see demo opens
    (d / "demos" / "0001.png").unlink()
    (d / "demos" / "0001.png").symlink_to(secret)
    relist(d, "demos/0001.png", secret.read_bytes())  # even with the target's true checksum in the manifest
    error, opened = load_recording_opens(d, api_base=srv.base_url, api_key=CALLER_KEY)
    assert isinstance(error, PersistenceError) and "symbolic link" in str(error) and "0001.png" in str(error)
    assert not [p for p in opened if p.endswith(("secret.png", "0001.png"))]  # neither the link nor its target
    assert srv.request_count == 0


def test_a_symlinked_demos_folder_is_refused(srv: FakeLLMServer, tmp_path: Path) -> None:
    d = save(tmp_path / "p", srv.base_url)
    outside = tmp_path / "elsewhere"
    shutil.move(str(d / "demos"), str(outside))  # the same files, with their true checksums, outside
    (d / "demos").symlink_to(outside, target_is_directory=True)
    error, opened = load_recording_opens(d, api_base=srv.base_url, api_key=CALLER_KEY)
    assert isinstance(error, PersistenceError) and "symbolic link" in str(error) and "demos" in str(error)
    assert not [p for p in opened if p.endswith("0001.png") or str(outside) in p]


def test_a_symlinked_manifest_or_prompts_file_is_refused(srv: FakeLLMServer, tmp_path: Path) -> None:
    for name in ("prompts.json", "dspydantic.json"):
        d = save(tmp_path / name, srv.base_url)
        real = tmp_path / f"real-{name}"
        shutil.move(str(d / name), str(real))
        (d / name).symlink_to(real)
        with pytest.raises(PersistenceError, match="symbolic link"):
            Prompter.load(d, model=Ticket, api_base=srv.base_url, api_key=CALLER_KEY)


@pytest.mark.parametrize("name", ["demos/0001.png", "prompts.json", "dspydantic.json"])
def test_a_fifo_fails_at_once_instead_of_hanging(srv: FakeLLMServer, tmp_path: Path, name: str) -> None:
    d = save(tmp_path / "p", srv.base_url)
    (d / name).unlink()
    os.mkfifo(d / name)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            Prompter.load(d, model=Ticket, api_base=srv.base_url, api_key=CALLER_KEY)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(timeout=20)
    if t.is_alive():  # unblock the hung open so the test process can end
        with open(os.open(d / name, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            pass
        pytest.fail(f"load() hangs on a FIFO at {name}")
    assert isinstance(outcome[0], PersistenceError) and "FIFO" in str(outcome[0])


def test_a_file_the_manifest_does_not_list_is_never_read(srv: FakeLLMServer, tmp_path: Path) -> None:
    d = save(tmp_path / "p", srv.base_url)
    (d / "demos" / "0009.png").write_bytes(GREEN)  # in the folder, but not listed

    def refer(prompts: dict[str, Any]) -> dict[str, Any]:
        prompts["optimized"]["demos"][1]["input"][1]["path"] = "demos/0009.png"
        return prompts

    edit_json(d, "prompts.json", refer)
    error, opened = load_recording_opens(d, api_base=srv.base_url, api_key=CALLER_KEY)
    assert isinstance(error, PersistenceError) and "'demos/0009.png', which the manifest does not list" in str(error)
    assert not [p for p in opened if p.endswith("0009.png")]


def test_a_checksum_mismatch_is_refused(srv: FakeLLMServer, tmp_path: Path) -> None:
    d = save(tmp_path / "p", srv.base_url)
    (d / "demos" / "0001.png").write_bytes(tiny_png((255, 0, 0)))  # another image, same size, manifest unchanged
    with pytest.raises(PersistenceError, match=r"0001\.png' is corrupt or truncated, or was changed"):
        Prompter.load(d, model=Ticket, api_base=srv.base_url, api_key=CALLER_KEY)
    d = save(tmp_path / "q", srv.base_url)
    m = manifest(d)
    del m["files"]["demos/0001.png"]["sha256"]  # an entry without a checksum is not trusted either
    write_manifest(d, m)
    with pytest.raises(PersistenceError, match=r"no sha256 for 'demos/0001\.png'"):
        Prompter.load(d, model=Ticket, api_base=srv.base_url, api_key=CALLER_KEY)


@pytest.mark.parametrize(
    "rel", ["/etc/passwd", "../outside.json", "demos/../../x.png", "demos//0001.png", "./schema.json"]
)
def test_a_listed_path_outside_the_folder_is_refused(srv: FakeLLMServer, tmp_path: Path, rel: str) -> None:
    d = save(tmp_path / "p", srv.base_url)
    m = manifest(d)
    m["files"][rel] = {"sha256": "0" * 64, "bytes": 1}
    write_manifest(d, m)
    error, opened = load_recording_opens(d, api_base=srv.base_url, api_key=CALLER_KEY)
    assert isinstance(error, PersistenceError) and "leaves the directory" in str(error)
    assert not [p for p in opened if p.endswith(("passwd", "outside.json", "x.png"))]


def test_sizes_are_bounded_before_anything_is_read(srv: FakeLLMServer, tmp_path: Path) -> None:
    d = save(tmp_path / "p", srv.base_url)
    m = manifest(d)
    for i in range(5):  # 5 x 60 MiB: each file under the per-file limit, together over the directory's
        m["files"][f"demos/9{i:03d}.png"] = {"sha256": "0" * 64, "bytes": 60 * 1024 * 1024}
    write_manifest(d, m)
    error, opened = load_recording_opens(d, api_base=srv.base_url, api_key=CALLER_KEY)
    assert isinstance(error, PersistenceError) and "bytes of files" in str(error)
    assert [p for p in opened if p.endswith((".png", "prompts.json", "schema.json"))] == []  # the manifest only
    d = save(tmp_path / "q", srv.base_url)
    (d / "demos" / "0001.png").write_bytes(GREEN + b"\0" * 1_000_000)  # grown behind the manifest's back
    with pytest.raises(PersistenceError, match=r"more than \d+ bytes"):
        Prompter.load(d, model=Ticket, api_base=srv.base_url, api_key=CALLER_KEY)


# ==================================================================================================
# settings validated; deep or malformed JSON -> PersistenceError


@pytest.mark.parametrize(
    ("key", "value"),
    [("lm_retries", 1000000), ("timeout", "soon"), ("max_retries", True), ("temperature", 5), ("timeout", -1),
     ("stop", [1, 2]), ("confidence_samples", 10**6), ("retry_backoff", "1"), ("require_grounding", "yes")],
)
def test_saved_settings_are_checked_against_their_types_and_ranges(
    srv: FakeLLMServer, tmp_path: Path, key: str, value: Any
) -> None:
    d = save(tmp_path / "p", srv.base_url)
    m = manifest(d)
    m["lm"]["settings"][key] = value
    write_manifest(d, m)
    with pytest.raises(PersistenceError) as err:
        Prompter.load(d, model=Ticket, api_base=srv.base_url, api_key=CALLER_KEY)
    assert f"{key}={value!r}" in str(err.value) and "dspydantic.json" in str(err.value)


def test_a_save_refuses_a_setting_a_load_would_refuse(srv: FakeLLMServer, tmp_path: Path) -> None:
    p = Prompter(Ticket, "openai/fake", api_base=srv.base_url, api_key=CALLER_KEY, lm_retries=1000)
    with pytest.raises(PersistenceError, match="lm_retries=1000"):
        p.save(tmp_path / "p")
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("name", ["dspydantic.json", "prompts.json", "schema.json"])
def test_deeply_nested_json_is_a_persistence_error_not_a_recursion_error(
    srv: FakeLLMServer, tmp_path: Path, name: str
) -> None:
    d = save(tmp_path / "p", srv.base_url)
    deep = b"[" * 100_000 + b"]" * 100_000
    if name == "dspydantic.json":
        (d / name).write_bytes(deep)
    else:
        relist(d, name, deep)
    with pytest.raises(PersistenceError, match=r"deeper than|not valid JSON|not a JSON object"):
        Prompter.load(d, model=Ticket, api_base=srv.base_url, api_key=CALLER_KEY)
    # and a structure deep enough to parse, hidden inside a valid file
    d = save(tmp_path / "q", srv.base_url)
    nested: Any = "x"
    for _ in range(500):
        nested = {"a": nested}
    if name == "dspydantic.json":
        write_manifest(d, {**manifest(d), "extra": nested})
    else:
        edit_json(d, name, lambda v: {**v, "extra": nested})
    with pytest.raises(PersistenceError, match="deeper than"):
        Prompter.load(d, model=Ticket, api_base=srv.base_url, api_key=CALLER_KEY)


GARBAGE: list[Any] = [None, 0, -1, 1e308, "x", "", [], {}, [[[]]], True, {"type": "image_file", "path": "/etc/passwd"}]
PLACES: list[tuple[str, tuple[Any, ...]]] = [
    ("dspydantic.json", ("format_version",)), ("dspydantic.json", ("model",)), ("dspydantic.json", ("model", "name")),
    ("dspydantic.json", ("model", "free_text")), ("dspydantic.json", ("lm",)), ("dspydantic.json", ("lm", "model_id")),
    ("dspydantic.json", ("lm", "api_base")), ("dspydantic.json", ("lm", "settings")), ("dspydantic.json", ("files",)),
    ("dspydantic.json", ("files", "schema.json")), ("dspydantic.json", ("files", "demos/0001.png", "bytes")),
    ("dspydantic.json", ("library_version",)),
    ("prompts.json", ()), ("prompts.json", ("original",)), ("prompts.json", ("optimized",)),
    ("prompts.json", ("optimized", "system_prompt")), ("prompts.json", ("optimized", "field_descriptions")),
    ("prompts.json", ("optimized", "demos")), ("prompts.json", ("optimized", "demos", 0)),
    ("prompts.json", ("optimized", "demos", 0, "input")), ("prompts.json", ("optimized", "demos", 0, "output")),
    ("prompts.json", ("optimized", "demos", 1, "input", 1)),
    ("prompts.json", ("optimized", "demos", 1, "input", 1, "path")),
    ("prompts.json", ("optimized", "demos", 1, "input", 1, "mime")),
    ("prompts.json", ("optimized", "demos", 1, "input", 1, "image_url")),
    ("schema.json", ()), ("schema.json", ("properties",)), ("schema.json", ("properties", "route")),
    ("schema.json", ("properties", "route", "type")), ("schema.json", ("properties", "seats", "items")),
    ("schema.json", ("required",)), ("schema.json", ("type",)),
]


def _set(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    value[path[0]] = _set(value[path[0]], path[1:], new) if len(path) > 1 else new
    return value


def test_any_malformed_value_anywhere_is_a_persistence_error(srv: FakeLLMServer, tmp_path: Path) -> None:
    """Each value of a list of garbage at each place of each file (checksums and the schema fingerprint
    updated, as an attacker would): load() either works or raises PersistenceError, nothing else."""
    pristine = save(tmp_path / "pristine", srv.base_url)
    unexpected: list[str] = []
    loaded = refused = 0
    for (name, place) in PLACES:
        for garbage in GARBAGE:
            d = tmp_path / "case"
            shutil.rmtree(d, ignore_errors=True)
            shutil.copytree(pristine, d, symlinks=True)
            value = _set(json.loads((d / name).read_bytes()), place, garbage)
            if name == "dspydantic.json":
                write_manifest(d, value)
            else:
                relist(d, name, json.dumps(value).encode())
                if name == "schema.json" and isinstance(value, dict):
                    m = manifest(d)
                    m["model"]["fingerprint"] = fingerprint(value)
                    write_manifest(d, m)
            for model in (Ticket, None):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        Prompter.load(d, model=model, api_base=srv.base_url, api_key=CALLER_KEY)
                    loaded += 1
                except PersistenceError:
                    refused += 1
                except Exception as exc:
                    unexpected.append(f"{name} {place} = {garbage!r:.40} (model={model}): {type(exc).__name__}: {exc}")
    assert unexpected == []
    assert refused > 0 and loaded > 0  # both outcomes happen: the cases reach the checks


# ==================================================================================================
# readers never see a half-swapped directory; saving through a symlink


_SAVER = textwrap.dedent(
    """
    import sys
    from pydantic import BaseModel
    from dspydantic import Prompter
    from dspydantic._render import Demo

    class Ticket(BaseModel):
        route: str
        price: float
        seats: list[str] = []

    target, stop = sys.argv[1], sys.argv[2]
    p = Prompter(Ticket, "openai/fake", api_base="http://127.0.0.1:9/v1", api_key="k")
    import os
    n = 0
    print("ready", flush=True)
    while not os.path.exists(stop):
        tag = "AB"[n % 2]
        p.state = p.state.replace(system_prompt=f"state {tag}",
                                  demos=[Demo(f"demo {tag} {i}", {"route": tag, "price": i}) for i in range(20)])
        p.save(target)
        n += 1
    print(n, flush=True)
    """
)


def test_150_loads_while_another_process_saves_the_same_directory(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    stop = tmp_path / "stop"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    saver = subprocess.Popen([sys.executable, "-c", _SAVER, str(target), str(stop)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert saver.stdout is not None and saver.stdout.readline().strip() == "ready", saver.stderr
        while not (target / "dspydantic.json").exists():
            time.sleep(0.01)

        def load(_: int) -> str:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    q = Prompter.load(target, model_id="openai/fake", api_base="http://127.0.0.1:9/v1", api_key="k")
                tag = str(q.system_prompt)[-1]
                consistent = all(d.input.startswith(f"demo {tag} ") for d in q.demos) and len(q.demos) == 20
                return tag if consistent else f"mixed {q.system_prompt}"
            except Exception as exc:
                return f"{type(exc).__name__}: {exc}"

        # at least 150 loads, and more until both saved states were seen (the loads really overlapped the
        # saves: on a busy machine the first 150 can all fall between two saves)
        outcomes: list[str] = []
        deadline = time.monotonic() + 60
        with ThreadPoolExecutor(4) as pool:
            while len(outcomes) < 150 or ({"A", "B"} - set(outcomes) and time.monotonic() < deadline):
                outcomes += pool.map(load, range(50))
    finally:
        stop.touch()
        out, err = saver.communicate(timeout=60)
    failures = [o for o in outcomes if o not in ("A", "B")]
    assert failures == [], failures[:3]
    assert saver.returncode == 0, err
    assert int(out.split()[-1]) >= 2  # the saver really saved meanwhile
    assert {"A", "B"} <= set(outcomes)


def test_saving_through_a_symlink_updates_its_target_and_keeps_the_link(srv: FakeLLMServer, tmp_path: Path) -> None:
    real = save(tmp_path / "real", srv.base_url)
    link = tmp_path / "current"
    link.symlink_to(real, target_is_directory=True)
    p = Prompter.load(link, model=Ticket, api_base=srv.base_url, api_key=CALLER_KEY)  # the caller's own link
    p.state = p.state.replace(system_prompt="Saved through the link.")
    p.save(link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert Prompter.load(real, model=Ticket, api_base=srv.base_url).system_prompt == "Saved through the link."
    assert sorted(x.name for x in tmp_path.iterdir()) == ["current", "real"]  # nothing left beside them

    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(PersistenceError, match=r"symbolic link to .* not an existing directory"):
        p.save(dangling)
    assert dangling.is_symlink() and not (tmp_path / "nowhere").exists()
    to_file = tmp_path / "to-file"
    (tmp_path / "file.txt").write_text("keep me")
    to_file.symlink_to(tmp_path / "file.txt")
    with pytest.raises(PersistenceError):
        p.save(to_file)
    assert (tmp_path / "file.txt").read_text() == "keep me" and to_file.is_symlink()


# ==================================================================================================
# directories saved by earlier versions still load


def test_a_directory_saved_by_main_before_this_change_loads(srv: FakeLLMServer, tmp_path: Path) -> None:
    """tests/fixtures/saved_main_8d7ec75 was written by main at 8d7ec75 (format 1; its report.json still holds
    the demo image inline as base64)."""
    from dspydantic.optimize import OptimizationResult

    d = tmp_path / "old"
    shutil.copytree(FIXTURES / "saved_main_8d7ec75", d)
    for model in (Ticket, None):
        q = Prompter.load(d, model=model, api_base=srv.base_url, api_key=CALLER_KEY)
        assert q.system_prompt == "You read train tickets." and q.temperature == 0.0 and q.lm_retries == 1
        image = q.demos[1].input[1]  # type: ignore[index]
        assert image["image_url"]["url"].startswith("data:image/png;base64,")
        assert isinstance(q.optimization_result, OptimizationResult)
        assert q.optimization_result.state == q.state  # the inline report image equals the demo file
        assert q.run("Berlin - Hamburg").route == "Berlin - Hamburg"
    q.save(tmp_path / "resaved")  # re-saved: the report refers to the demo file
    assert b"base64" not in (tmp_path / "resaved" / "report.json").read_bytes()
    assert Prompter.load(tmp_path / "resaved", api_base=srv.base_url).state == q.state


LEGACY_FILES = {
    "dspydantic_metadata.json": {"version": "0.1.6", "model_id": "openai/fake", "model_config": {}, "metadata": {}},
    "optimized_state.json": {
        "optimized_descriptions": {"route": "Stations"}, "optimized_system_prompt": "Old prompt.",
        "optimized_instruction_prompt": None,
        "optimized_demos": [{"input_data": {"text": "t", "images": [base64.b64encode(GREEN).decode()]},
                             "expected_output": ANSWER}],
    },
    "model_schema.json": Ticket.model_json_schema(),
}
LEGACY_PLACES: list[tuple[str, tuple[Any, ...]]] = [
    ("dspydantic_metadata.json", ()), ("dspydantic_metadata.json", ("version",)),
    ("dspydantic_metadata.json", ("model_id",)), ("dspydantic_metadata.json", ("model_config",)),
    ("optimized_state.json", ()), ("optimized_state.json", ("optimized_descriptions",)),
    ("optimized_state.json", ("optimized_system_prompt",)), ("optimized_state.json", ("optimized_demos",)),
    ("optimized_state.json", ("optimized_demos", 0)), ("optimized_state.json", ("optimized_demos", 0, "input_data")),
    ("optimized_state.json", ("optimized_demos", 0, "input_data", "images")),
    ("optimized_state.json", ("optimized_demos", 0, "expected_output")),
    ("model_schema.json", ()), ("model_schema.json", ("properties",)), ("model_schema.json", ("title",)),
    ("model_schema.json", ("properties", "seats")), ("model_schema.json", ("required",)),
]


def test_any_malformed_value_in_a_0_1_directory_is_a_persistence_error(srv: FakeLLMServer, tmp_path: Path) -> None:
    unexpected: list[str] = []
    for name, place in LEGACY_PLACES:
        for garbage in GARBAGE:
            d = tmp_path / "old"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            for file, content in LEGACY_FILES.items():
                value = _set(json.loads(json.dumps(content)), place, garbage) if file == name else content
                (d / file).write_text(json.dumps(value))
            for model in (Ticket, None):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        Prompter.load(d, model=model, model_id="openai/fake", api_base=srv.base_url, api_key="k")
                except PersistenceError:
                    pass
                except Exception as exc:
                    unexpected.append(f"{name} {place} = {garbage!r:.40} (model={model}): {type(exc).__name__}: {exc}")
    assert unexpected == []
