"""The record of a provider batch job: what a new process needs to pick the job up.

A small JSON document (a file, or an entry of a ``store=`` object with ``save_batch_job(job_id, record)`` /
``load_batch_job(job_id)``), holding ids only: the provider's batch and file ids, the prompter's
fingerprint, the model id, the endpoint without credentials, and for each input the custom id of its
request. No document text, no answer, no key, no header.

``lines`` are the job's distinct requests ``[custom_id, source, cache_key]`` (``source``: an index into
``sources``, the provider batches holding answers; -1 for an answer already in the Prompter's cache, -2 for
a request never submitted because the submission failed part-way);
``items`` maps each input, in order, to its line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .._cache import default_cache_dir
from ..errors import ConfigurationError, PersistenceError

FORMAT = "dspydantic.batch_job"
FORMAT_VERSION = 1
_INDEX_PREFIX = "index:"
#: ``source`` of a line answered from the Prompter's cache / never submitted (the submission failed part-way)
#: / not submitted because the document needs chunking (one batch request cannot carry it)
CACHED, NOT_SUBMITTED, TOO_LONG = -1, -2, -3
_HEAD = b'{"format":"dspydantic.batch_job"'
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def default_dir() -> Path:
    """Where job files go: ``$DSPYDANTIC_BATCH_DIR``, else ``batches/`` in the dspydantic cache directory."""
    env = os.environ.get("DSPYDANTIC_BATCH_DIR")
    return Path(env) if env else default_cache_dir() / "batches"


def _check_store(store: Any) -> None:
    if not (callable(getattr(store, "save_batch_job", None)) and callable(getattr(store, "load_batch_job", None))):
        raise ConfigurationError(
            f"store= must have save_batch_job(job_id, record) and load_batch_job(job_id), got {type(store).__name__}"
        )


def _filename(job_id: str) -> str:
    """The record's file name for a job id (ids come from the provider: never a path)."""
    if _SAFE_ID.fullmatch(job_id):
        return f"{job_id}.json"
    return f"job-{hashlib.sha256(job_id.encode('utf-8')).hexdigest()[:32]}.json"


def save(record: dict[str, Any], *, path: Path | None, store: Any) -> Path | None:
    """Write the record (atomically for a file); with a store, also index it by prompter fingerprint."""
    if store is not None:
        _check_store(store)
        store.save_batch_job(record["id"], record)
        key = _INDEX_PREFIX + record["fingerprint"]
        index = store.load_batch_job(key) or {"jobs": []}
        jobs = [j for j in index.get("jobs", []) if isinstance(j, str)]
        if record["id"] not in jobs:
            store.save_batch_job(key, {"jobs": [*jobs, record["id"]]})
        return None
    target = path if path is not None else default_dir() / _filename(record["id"])
    target.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise PersistenceError(f"could not write the batch job record {str(target)!r}: {exc}") from None
    return target


def load(id_or_path: str | os.PathLike[str], *, store: Any) -> tuple[dict[str, Any], Path | None]:
    """The record named by a file path, or by a job id (in ``store``, else in :func:`default_dir`)."""
    text = os.fspath(id_or_path)
    candidate = Path(text)
    if store is not None and not candidate.is_file():
        _check_store(store)
        record = store.load_batch_job(text)
        if record is None:
            raise ConfigurationError(f"no batch job {text!r} in {type(store).__name__}")
        return validate(record, text), None
    if not candidate.is_file():
        by_id = default_dir() / _filename(candidate.name)
        if candidate.name == text and by_id.is_file():
            candidate = by_id
        else:
            raise ConfigurationError(
                f"no batch job record at {text!r} (nor {str(by_id)!r}): pass the job file or the job id"
            )
    try:
        record = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PersistenceError(f"could not read the batch job record {str(candidate)!r}: {exc}") from None
    return validate(record, str(candidate)), candidate


def validate(record: Any, where: str) -> dict[str, Any]:
    """Check a record's shape (a file may have been edited or truncated) before anything trusts it."""

    def bad(why: str) -> PersistenceError:
        return PersistenceError(f"{where} is not a dspydantic batch job record: {why}")

    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise bad("wrong or missing 'format'")
    if record.get("format_version") != FORMAT_VERSION:
        raise bad(f"format_version {record.get('format_version')!r} (this version reads {FORMAT_VERSION})")
    for key in ("id", "fingerprint", "endpoint"):
        if not isinstance(record.get(key), str):
            raise bad(f"'{key}' must be a string")
    sources, lines, items = record.get("sources"), record.get("lines"), record.get("items")
    if not isinstance(sources, list) or not all(
        isinstance(s, dict) and isinstance(s.get("batch_id"), str) and isinstance(s.get("input_file_id"), str)
        for s in sources
    ):
        raise bad("'sources' must be a list of {batch_id, input_file_id}")
    if not isinstance(lines, list) or not all(
        isinstance(ln, list)
        and len(ln) == 3
        and isinstance(ln[0], str)
        and isinstance(ln[1], int)
        and TOO_LONG <= ln[1] < len(sources)
        and (ln[2] is None or isinstance(ln[2], str))
        for ln in lines
    ):
        raise bad("'lines' must be a list of [custom_id, source index, cache key or null]")
    if not isinstance(items, list) or not all(isinstance(i, int) and 0 <= i < len(lines) for i in items):
        raise bad("'items' must be a list of line indexes")
    return record


def related(fingerprint: str, endpoint: str, *, directory: Path, store: Any) -> list[dict[str, Any]]:
    """Earlier jobs of the same prompter at the same endpoint (their finished work can be reused)."""
    found: list[dict[str, Any]] = []
    if store is not None:
        _check_store(store)
        index = store.load_batch_job(_INDEX_PREFIX + fingerprint) or {}
        for job_id in index.get("jobs", []):
            record = store.load_batch_job(job_id) if isinstance(job_id, str) else None
            if record is not None:
                found.append(record)
    elif directory.is_dir():
        for path in sorted(directory.glob("*.json")):
            try:
                with open(path, "rb") as fh:  # our records start with their format: skip other JSON at once
                    if _HEAD not in fh.read(len(_HEAD) + 8):
                        continue
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                continue
            if isinstance(record, dict) and record.get("fingerprint") == fingerprint:
                found.append(record)
    usable: list[dict[str, Any]] = []
    for record in found:
        try:
            checked = validate(record, "an earlier batch job record")
        except PersistenceError:
            continue
        if checked["fingerprint"] == fingerprint and checked["endpoint"] == endpoint:
            usable.append(checked)
    return usable
