"""The file pipeline behind ``dspydantic extract``: inputs (files, directories, globs, ``-`` for JSON lines on
stdin) -> one record per input in a JSON-lines file or a directory of JSON files.

Resumable: every record carries the SHA-256 of its input's content, and an input whose content already has a
successful record in the output is skipped (failed ones are tried again; the newer record wins). A failing
input (unreadable, corrupt, no valid answer, LM error) gets an error record and the rest goes on.

With ``html_dir`` each answer also gets its review page there (``<name>-<hash>.html``: the source with the
grounded spans of every field highlighted with their confidence, see
:func:`dspydantic.confidence.render_review_html`), named in its record as ``review_html``.

A file is a PDF or an image by its extension (or, without a known one, by its first bytes); anything else is
read as UTF-8 text. A JSON line on stdin is a string (the text) or an object with input keys (``text``,
``image_path``, ``image_base64``, ``pdf_path``, ``pdf_mode``, ``max_pdf_pages``, ...: the input keywords but raw
bytes) and optionally an ``id``.
"""

from __future__ import annotations

import fnmatch
import glob as globlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .._inputs import INPUT_KEYS
from .._media import SNIFF_BYTES, sniff_image_mime
from ..errors import ConfigurationError
from ._version import prompter_version

__all__ = ["ExtractSummary", "Source", "discover", "read_done", "run_extract"]

PDF_EXT = {".pdf"}
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".gif", ".webp"}
#: the input keywords (the one spec, ``dspydantic._inputs``) a JSON line can carry: all but raw bytes and PIL images
_STDIN_KEYS = INPUT_KEYS - {"image_bytes", "pdf_bytes", "image"}


@dataclass
class Source:
    """One input: where it comes from, its content hash, and how the Prompter takes it."""

    id: str
    sha256: str
    kind: str  # "text" | "pdf" | "image" | "json"
    path: Path | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why it cannot be extracted (found while reading it)

    def inputs(self) -> dict[str, Any]:
        """The keyword arguments of ``predict_with_confidence`` (reads a text file now)."""
        if self.kind == "text" and self.path is not None:
            try:
                return {"text": self.path.read_bytes().decode("utf-8")}
            except UnicodeDecodeError as exc:
                raise ConfigurationError(
                    f"{self.id} is not UTF-8 text ({exc.reason} at byte {exc.start}); PDFs and images are "
                    "recognised by their extension or their first bytes"
                ) from None
        return dict(self.kwargs)


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"%PDF"):
        return "pdf"
    if sniff_image_mime(head) is not None:
        return "image"
    return None


def _file_source(path: Path, shown: str) -> Source:
    try:
        with path.open("rb") as fh:
            head = fh.read(SNIFF_BYTES)
            fh.seek(0)
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        return Source(shown, "", "text", path, problem=f"cannot read {shown}: {exc.strerror or exc}")
    ext = path.suffix.lower()
    kind = "pdf" if ext in PDF_EXT else "image" if ext in IMAGE_EXT else (_sniff(head) or "text")
    kwargs: dict[str, Any] = {}
    if kind == "pdf":
        kwargs = {"pdf_path": str(path)}
    elif kind == "image":
        kwargs = {"image_path": str(path)}
    return Source(shown, digest, kind, path, kwargs)


def _walk(directory: Path, pattern: str | None) -> Iterator[Path]:
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if pattern is None or fnmatch.fnmatch(name, pattern):
                yield Path(root) / name


def _stdin_sources(stream: IO[str]) -> Iterator[Source]:
    for n, line in enumerate(stream, 1):
        if not line.strip():
            continue
        digest = hashlib.sha256(line.strip().encode()).hexdigest()
        try:
            value = json.loads(line)
        except ValueError as exc:
            yield Source(f"stdin:{n}", digest, "json", problem=f"line {n} of stdin is not JSON: {exc}")
            continue
        ident = f"stdin:{n}"
        if isinstance(value, str):
            yield Source(ident, digest, "json", kwargs={"text": value})
            continue
        if not isinstance(value, dict):
            yield Source(ident, digest, "json", problem=f"line {n} of stdin must be a JSON string or object")
            continue
        value = dict(value)
        if "id" in value:
            ident = str(value.pop("id"))
        unknown = set(value) - _STDIN_KEYS
        if unknown or not value:
            yield Source(ident, digest, "json", problem=(
                f"line {n} of stdin: unknown key(s) {sorted(unknown)}; expected {sorted(_STDIN_KEYS)} and 'id'"
                if unknown else f"line {n} of stdin has no input"))
            continue
        yield Source(ident, digest, "json", kwargs=value)


def discover(inputs: Sequence[str], pattern: str | None = None, stdin: IO[str] | None = None) -> Iterator[Source]:
    """Every input named: files, directories (recursively; hidden entries skipped; ``pattern`` filters file
    names), glob patterns, and ``-`` (JSON lines from ``stdin``). A name that matches nothing is an error."""
    for name in inputs:
        if name == "-":
            if stdin is None:
                raise ConfigurationError("'-' given but there is no standard input")
            yield from _stdin_sources(stdin)
            continue
        path = Path(name)
        if path.is_dir():
            for file in _walk(path, pattern):
                yield _file_source(file, str(file))
        elif path.exists():
            yield _file_source(path, name)
        elif globlib.has_magic(name):
            matches = sorted(p for p in globlib.glob(name, recursive=True) if Path(p).is_file())
            if not matches:
                raise ConfigurationError(f"no file matches {name!r}")
            for match in matches:
                yield _file_source(Path(match), match)
        else:
            raise ConfigurationError(f"no such file or directory: {name!r}")


# --------------------------------------------------------------------------------------------------
# output


def _dir_output(out: str) -> bool:
    return out.endswith(("/", os.sep)) or Path(out).is_dir() or (not Path(out).suffix and out != "-")


def read_done(out: str) -> set[str]:
    """Content hashes that already have a successful record in ``out`` (the last record of a hash wins)."""
    status: dict[str, bool] = {}
    if out == "-":
        return set()
    path = Path(out)
    if _dir_output(out):
        files = sorted(path.glob("*.json")) if path.is_dir() else []
        lines: Iterable[str] = (f.read_text(encoding="utf-8", errors="replace") for f in files)
    elif path.is_file():
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    else:
        return set()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash: that input runs again
        if isinstance(record, dict) and isinstance(record.get("sha256"), str):
            status[record["sha256"]] = bool(record.get("ok"))
    return {h for h, ok in status.items() if ok}


def _file_stem(ident: str, sha256: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(ident).stem)[:80] or "input"
    return f"{stem}-{(sha256 or 'unread')[:12]}"


class _Writer:
    def __init__(self, out: str, stdout: IO[str]) -> None:
        self.out = out
        self.directory = _dir_output(out)
        self._fh: IO[str] | None = None
        self._stdout = stdout
        if self.directory:
            Path(out).mkdir(parents=True, exist_ok=True)
        elif out != "-":
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(out, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False)
        if self.directory:
            target = Path(self.out) / f"{_file_stem(record['id'], record['sha256'])}.json"
            tmp = target.with_suffix(".json.tmp")
            tmp.write_text(line, encoding="utf-8")
            os.replace(tmp, target)
            return
        fh = self._fh if self._fh is not None else self._stdout
        fh.write(line + "\n")
        fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


# --------------------------------------------------------------------------------------------------
# running


@dataclass
class ExtractSummary:
    extracted: int = 0
    skipped: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.extracted + self.skipped + self.failed


def _extract_with_source(prompter: Any, inputs: dict[str, Any]) -> tuple[Any, str]:
    """The result and the text it was read from (a PDF's text layer; '' for an image), reading the input once."""
    from .._inputs import build_input

    doc = build_input(**inputs)
    if hasattr(prompter, "predict_batch") and hasattr(prompter, "renderer"):  # a Prompter takes the document
        (out,) = prompter.predict_batch([doc], 1, "return", with_confidence=True)
        if isinstance(out, BaseException):
            raise out
        return out, doc.text
    return prompter.predict_with_confidence(**inputs), doc.text


def _write_review(html_dir: Path, source: Source, result: Any, text: str) -> str:
    from ..confidence.review import render_review_html

    target = html_dir / f"{_file_stem(source.id, source.sha256)}.html"
    tmp = target.with_suffix(".html.tmp")
    tmp.write_text(render_review_html(result, text, title=f"Extraction review: {source.id}"), encoding="utf-8")
    os.replace(tmp, target)
    return str(target)


def _record(source: Source, prompter: Any, version: str, html_dir: Path | None = None) -> dict[str, Any]:
    base: dict[str, Any] = {"id": source.id, "sha256": source.sha256, "kind": source.kind}
    page = None
    try:
        if source.problem is not None:
            raise ConfigurationError(source.problem)
        if html_dir is None:
            result = prompter.predict_with_confidence(**source.inputs())
        else:
            result, text = _extract_with_source(prompter, source.inputs())
            page = _write_review(html_dir, source, result, text)
    except Exception as exc:  # every failure becomes the input's error record
        return {**base, "ok": False, "error": {"type": type(exc).__name__, "message": str(exc)}}
    u = result.usage
    record = {
        **base,
        "ok": True,
        "data": result.data.model_dump(mode="json", by_alias=True),
        "confidence": result.confidence,
        "field_confidences": dict(result.field_confidences),
        "spans": {k: [list(span) for span in v] for k, v in result.spans.items()},
        "ungrounded": list(result.ungrounded),
        "usage": {"calls": u.calls, "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                  "cache_hits": u.cache_hits, "cost_usd": u.cost_usd},
        "attempts": result.attempts,
        "cached": result.cached,
        "prompter_version": version,
    }
    if page is not None:
        record["review_html"] = page
    return record


def run_extract(
    prompter: Any,
    sources: Iterable[Source],
    out: str,
    *,
    workers: int = 4,
    stdout: IO[str] | None = None,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    html_dir: str | os.PathLike[str] | None = None,
) -> ExtractSummary:
    """Extract every source not already done in ``out`` on ``workers`` threads; records are written (and
    flushed) from this thread as they finish, so an interrupted run resumes where it stopped.
    ``on_start(n)`` is told how many inputs will run, ``on_done(record)`` about each finished one;
    ``html_dir`` gets a review page per answer."""
    import sys

    if not isinstance(workers, int) or workers < 1:
        raise ConfigurationError(f"workers must be a positive int, got {workers!r}")
    done = read_done(out)
    summary = ExtractSummary()
    todo: list[Source] = []
    for source in sources:
        if source.sha256 and source.sha256 in done:
            summary.skipped += 1
        else:
            todo.append(source)
    if on_start is not None:
        on_start(len(todo))
    version = prompter_version(prompter)
    pages = Path(html_dir) if html_dir is not None else None
    if pages is not None:
        pages.mkdir(parents=True, exist_ok=True)
    writer = _Writer(out, stdout if stdout is not None else sys.stdout)

    def finish(record: dict[str, Any]) -> None:
        writer.write(record)
        if record["ok"]:
            summary.extracted += 1
        else:
            summary.failed += 1
            summary.failures.append((record["id"], f"{record['error']['type']}: {record['error']['message']}"))
        if on_done is not None:
            on_done(record)

    try:
        if workers == 1:
            for source in todo:
                finish(_record(source, prompter, version, pages))
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                # at most 2 x workers submitted at a time: a huge input list is not all held in memory at once
                queue = iter(todo)
                running: set[Future[dict[str, Any]]] = set()
                for source in queue:
                    running.add(pool.submit(_record, source, prompter, version, pages))
                    if len(running) >= 2 * workers:
                        finished, running = wait(running, return_when=FIRST_COMPLETED)
                        for f in finished:
                            finish(f.result())
                while running:
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    for f in finished:
                        finish(f.result())
    finally:
        writer.close()
    return summary
