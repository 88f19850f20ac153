"""Save and load a :class:`~dspydantic.Prompter` as a versioned directory of plain JSON.

Layout written by :func:`save_prompter` (format version 1)::

    <dir>/dspydantic.json   manifest: format, versions, model name + schema fingerprint, LM id and settings,
                            and a sha256 of every other file
    <dir>/schema.json       the model's JSON schema (``$ref``s inlined, as the LM sees it)
    <dir>/prompts.json      original and optimized prompt state: prompts, field descriptions by dotted path,
                            demos (JSON-safe; images replaced by references to files in demos/)
    <dir>/demos/0001.png    demo images, one file each
    <dir>/report.json       the optimization report (only when there is one)
    <dir>/calibrator.json   the field-confidence calibrator (only when one was fitted; plain numbers, read
                            strictly: anything else is a PersistenceError)

Nothing executable and no secret is written: never an API key, and ``api_base`` loses its userinfo and query.
A save is atomic: everything is written to a temporary sibling directory and fsynced, then swapped in with
renames under a lock; any failure leaves the previous save as it was.

:func:`load_prompter` also reads the directories of dspydantic 0.1.x (``dspydantic_metadata.json``,
``optimized_state.json``, ``model_schema.json``).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import hashlib
import json
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

from ._media import data_url, decode_base64, parse_data_url, sniff_image_mime
from ._options import DEFAULT_SAMPLE_TEMPERATURE, MAX_CONFIDENCE_SAMPLES, sample_temperature_ok
from ._render import Demo, PromptState
from ._schema import (
    _strip_titles,
    _type_hint,
    ancestor_paths,
    default_descriptions,
    ensure_model,
    fingerprint,
    inline_schema,
    legacy_paths,
    model_schema,
    walk_fields,
)
from .errors import ConfigurationError, PersistenceError, SchemaDriftWarning

if TYPE_CHECKING:
    from ._prompter import Prompter

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "SchemaDriftWarning",
    "load_prompter",
    "read_saved",
    "sanitize_api_base",
    "save_prompter",
    "schema_drift",
]

FORMAT = "dspydantic.prompter"
FORMAT_VERSION = 1
MANIFEST = "dspydantic.json"
SCHEMA_FILE = "schema.json"
PROMPTS_FILE = "prompts.json"
REPORT_FILE = "report.json"
CALIBRATOR_FILE = "calibrator.json"
DEMO_DIR = "demos"
LEGACY_METADATA = "dspydantic_metadata.json"
LEGACY_STATE = "optimized_state.json"
LEGACY_SCHEMA = "model_schema.json"

_STALE_TMP_SECONDS = 3600.0
_MIME_EXT = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}
_EXT_MIME = {v: k for k, v in _MIME_EXT.items()} | {"jpeg": "image/jpeg"}
_PROMPT_KWARGS = ("system_prompt", "instruction_prompt", "field_descriptions", "demos")
# model settings except extra_body (it may hold anything: it is not written to disk), runtime options, and the
# confidence options (issue 11)
_MODEL_SETTINGS = ("temperature", "max_tokens", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")
_SETTINGS = (
    *_MODEL_SETTINGS, "max_retries", "lm_retries", "retry_backoff", "retry_max_time", "timeout", "logprobs",
    "require_grounding", "confidence_samples", "sample_temperature",
)
# JSON schema keys that constrain a value without changing its type (a change is "compatible")
_CONSTRAINT_KEYS = (
    "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "multipleOf", "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties",
)




# ==================================================================================================
# what a saved directory holds, whatever its format


@dataclass
class SavedPrompter:
    """The content of a saved prompter directory (either format), before a Prompter is built from it."""

    path: Path
    model_name: str
    schema: dict[str, Any]
    free_text: bool = False
    model_id: str | None = None
    api_base: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    original: PromptState = field(default_factory=PromptState)
    current: PromptState = field(default_factory=PromptState)
    report: Any = None
    calibrator: Any = None
    library_version: str | None = None
    format_version: int | None = None
    legacy: bool = False


# ==================================================================================================
# small helpers


def sanitize_api_base(url: str | None) -> str | None:
    """``url`` without userinfo, query string or fragment (they may carry credentials)."""
    if not url:
        return None
    parts = urlsplit(str(url))
    if not parts.scheme or not parts.hostname:
        return None  # not a URL we can clean reliably: better not to store it at all
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dumps(obj: Any, what: str) -> bytes:
    try:
        text = json.dumps(obj, ensure_ascii=False, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PersistenceError(f"could not save the prompter: {what} is not JSON-serializable ({exc})") from exc
    return (text + "\n").encode("utf-8")


def _jsonable(value: Any, what: str) -> Any:
    from pydantic_core import PydanticSerializationError, to_jsonable_python

    try:
        return to_jsonable_python(value)
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise PersistenceError(
            f"could not save the prompter: {what} is not JSON-serializable ({exc}); demo outputs must be "
            "plain data (use model.model_dump(mode='json'))"
        ) from exc


# ==================================================================================================
# save


class _Images:
    """Demo images written as files (identical images share one file)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self._by_hash: dict[str, str] = {}

    def add(self, data: bytes, mime: str) -> str:
        digest = _sha256(data)
        rel = self._by_hash.get(digest)
        if rel is None:
            ext = _MIME_EXT.get(mime.lower(), "bin")
            rel = f"{DEMO_DIR}/{len(self._by_hash) + 1:04d}.{ext}"
            self._by_hash[digest] = rel
            self.files[rel] = data
        return rel


def _demo_to_json(demo: Demo, images: _Images, what: str) -> dict[str, Any]:
    if isinstance(demo.input, str):
        inp: Any = demo.input
    else:
        inp = []
        for part in demo.input:
            if isinstance(part, Mapping) and part.get("type") == "image_url":
                spec = part.get("image_url")
                url = spec.get("url") if isinstance(spec, Mapping) else spec
                decoded = parse_data_url(url) if isinstance(url, str) else None
                if decoded is not None:
                    data, mime = decoded[0], decoded[1] or "application/octet-stream"
                    extra = {k: v for k, v in spec.items() if k != "url"} if isinstance(spec, Mapping) else {}
                    ref: dict[str, Any] = {"type": "image_file", "path": images.add(data, mime), "mime": mime}
                    if extra:
                        ref["image_url"] = _jsonable(extra, f"{what} image options")
                    inp.append(ref)
                    continue
            inp.append(_jsonable(part, f"{what} input"))
    return {"input": inp, "output": _jsonable(demo.output, f"{what} output")}


def _state_to_json(state: PromptState, images: _Images, what: str) -> dict[str, Any]:
    return {
        "system_prompt": state.system_prompt,
        "instruction_prompt": state.instruction_prompt,
        "field_descriptions": {str(k): str(v) for k, v in dict(state.field_descriptions).items()},
        "demos": [_demo_to_json(d, images, f"{what} demo {i + 1}") for i, d in enumerate(state.demos)],
    }


def _settings(prompter: Prompter) -> dict[str, Any]:
    out: dict[str, Any] = {}
    model_settings = getattr(prompter, "settings", None)
    if model_settings is not None:
        out.update({k: v for k, v in model_settings.as_dict().items() if k in _MODEL_SETTINGS})
    for name in ("max_retries", "lm_retries", "retry_backoff", "retry_max_time"):
        value = getattr(prompter, name, None)
        if value is not None:
            out[name] = value
    timeout = getattr(prompter.backend, "timeout", None)
    if isinstance(timeout, int | float) and not isinstance(timeout, bool):
        out["timeout"] = timeout
    default_logprobs = bool(getattr(prompter.backend, "cheap_logprobs", False))
    if getattr(prompter, "logprobs", default_logprobs) != default_logprobs:  # an explicit choice
        out["logprobs"] = bool(prompter.logprobs)
    require = getattr(prompter, "require_grounding", False)
    if require:
        out["require_grounding"] = True if require is True else sorted(str(p) for p in require)
    if getattr(prompter, "confidence_samples", 0):
        out["confidence_samples"] = int(prompter.confidence_samples)
    if getattr(prompter, "sample_temperature", DEFAULT_SAMPLE_TEMPERATURE) != DEFAULT_SAMPLE_TEMPERATURE:
        out["sample_temperature"] = float(prompter.sample_temperature)
    return out


def _report_json(prompter: Prompter) -> Any:
    result = getattr(prompter, "optimization_result", None)
    if result is None:
        return None
    to_json = getattr(result, "to_json", None)
    if not callable(to_json):
        return None
    return _jsonable(to_json(), "the optimization report")


def _render_files(prompter: Prompter) -> dict[str, bytes]:
    """Every file of the saved directory, in memory (nothing touches the disk before this succeeds)."""
    from . import __version__

    schema = copy.deepcopy(prompter._base_schema)
    images = _Images()
    original = prompter._original_state
    current = prompter.state
    prompts = {
        "original": _state_to_json(original, images, "original"),
        "optimized": None if current == original else _state_to_json(current, images, "optimized"),
        # what the LM is shown for each field (model descriptions + overrides): for reading, not loaded
        "effective_field_descriptions": {**default_descriptions(schema), **dict(current.field_descriptions)},
    }
    files: dict[str, bytes] = {
        SCHEMA_FILE: _dumps(schema, "the model schema"),
        PROMPTS_FILE: _dumps(prompts, "the prompts"),
    }
    report = _report_json(prompter)
    if report is not None:
        files[REPORT_FILE] = _dumps(report, "the optimization report")
    calibrator = getattr(prompter, "calibrator", None)
    if calibrator is not None:
        files[CALIBRATOR_FILE] = _dumps(calibrator.to_json(), "the calibrator")
    files.update(images.files)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "saved_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": {
            "name": prompter.model.__name__,
            "fingerprint": fingerprint(schema),
            "free_text": bool(prompter.free_text),
        },
        "lm": {
            "model_id": prompter.model_id,
            "api_base": sanitize_api_base(prompter.api_base),
            "backend": type(prompter.backend).__name__,
            "settings": _settings(prompter),
        },
        "optimized": current != original,
        "files": {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in sorted(files.items())},
    }
    files[MANIFEST] = _dumps(manifest, "the manifest")
    return files


# -- the atomic swap (module-level functions so tests can simulate a failure at any step) -------------


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _rename(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories; the data files are synced anyway
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _dir_lock(parent: Path, name: str) -> Iterator[None]:
    """Serialise swaps into ``parent`` (an advisory lock on the directory itself; no lock file on POSIX)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        from filelock import FileLock

        with FileLock(str(parent / f".{name}.lock"), timeout=120):
            yield
        return
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _is_prompter_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (path / LEGACY_METADATA).is_file()


def _siblings(target: Path, kind: str) -> list[Path]:
    prefix = f".{target.name}.{kind}-"
    try:
        return sorted(p for p in target.parent.iterdir() if p.name.startswith(prefix))
    except OSError:
        return []


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # cannot tell cheaply: rely on the age rule
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _clean_stale_tmp(target: Path) -> None:
    """Remove temp dirs of saves that died: their process is gone, or they are over an hour old."""
    now = time.time()
    prefix = f".{target.name}.tmp-"
    for p in _siblings(target, "tmp"):
        pid_text = p.name[len(prefix):].split("-", 1)[0]
        dead = pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text))
        with contextlib.suppress(OSError):
            if dead or now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)


def save_prompter(prompter: Prompter, path: str | os.PathLike[str]) -> None:
    """Write ``prompter`` to the directory ``path`` atomically (see the module docstring)."""
    target = Path(path).expanduser()
    if target.name in ("", ".", ".."):
        raise PersistenceError(
            f"cannot save a prompter to {str(path)!r}: give a directory name such as './my_prompter'"
        )
    target = target.absolute()
    files = _render_files(prompter)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PersistenceError(f"cannot create the directory {str(parent)!r} to save into: {exc}") from exc
    _check_replaceable(target)
    _clean_stale_tmp(target)
    # not tempfile.mkdtemp: its 0700 mode would become the saved directory's; mkdir honours the umask
    tmp = parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        tmp.mkdir()
    except OSError as exc:
        raise PersistenceError(f"cannot write in {str(parent)!r}: {exc}") from exc
    try:
        for rel, data in files.items():
            dest = tmp / rel
            if dest.parent != tmp:
                dest.parent.mkdir(parents=True, exist_ok=True)
            _write_file(dest, data)
        if (tmp / DEMO_DIR).is_dir():
            _fsync_dir(tmp / DEMO_DIR)
        _fsync_dir(tmp)
        with _dir_lock(parent, target.name):
            _swap(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, PersistenceError) or not isinstance(exc, Exception):
            raise
        raise PersistenceError(
            f"could not save the prompter to {str(target)!r} ({type(exc).__name__}: {exc}); "
            "the previous save there, if any, is unchanged"
        ) from exc


def _check_replaceable(target: Path) -> None:
    """A save may replace nothing, an empty directory, or a saved prompter; never anything else."""
    if not target.exists():
        return
    if not target.is_dir():
        raise PersistenceError(f"cannot save a prompter to {str(target)!r}: a file with that name exists")
    if any(target.iterdir()) and not _is_prompter_dir(target):
        raise PersistenceError(
            f"refusing to replace {str(target)!r}: it is a non-empty directory that is not a saved "
            "prompter. Save to a new path, or remove that directory first."
        )


def _swap(tmp: Path, target: Path) -> None:
    """Move ``tmp`` into place as ``target``; the old ``target`` survives any failure."""
    parent = target.parent
    old_backups = _siblings(target, "bak")  # left by a save that was killed between its two renames
    if target.exists():
        _check_replaceable(target)
        backup = parent / f".{target.name}.bak-{uuid.uuid4().hex[:12]}"
        _rename(target, backup)
        try:
            _rename(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                if target.exists():
                    shutil.rmtree(target, ignore_errors=True)
            _rename(backup, target)
            raise
        _fsync_dir(parent)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        _rename(tmp, target)
        _fsync_dir(parent)
    for stale in old_backups:
        shutil.rmtree(stale, ignore_errors=True)


# ==================================================================================================
# load: reading files


def _read_bytes(directory: Path, rel: str, *, what: str) -> bytes:
    path = directory / rel
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PersistenceError(
            f"{str(path)!r} is missing: the saved prompter at {str(directory)!r} is incomplete "
            f"({what}). Restore the directory from your copy, or save the prompter again."
        ) from None
    except OSError as exc:
        raise PersistenceError(f"cannot read {str(path)!r}: {exc}") from exc


def _read_json(directory: Path, rel: str, *, what: str, data: bytes | None = None) -> Any:
    raw = _read_bytes(directory, rel, what=what) if data is None else data
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersistenceError(
            f"{str(directory / rel)!r} is not valid JSON ({exc}): the file is truncated or corrupt. "
            "Restore the directory from your copy, or save the prompter again."
        ) from None


def _expect(cond: bool, directory: Path, rel: str, detail: str) -> None:
    if not cond:
        raise PersistenceError(
            f"{str(directory / rel)!r} does not look like a file dspydantic wrote ({detail}). "
            "Point load() at a directory written by Prompter.save(), or save the prompter again."
        )


def _safe_rel(directory: Path, rel: Any, source: str) -> str:
    _expect(isinstance(rel, str) and bool(rel), directory, source, f"bad file reference {rel!r}")
    inside = not Path(str(rel)).is_absolute() and ".." not in Path(str(rel)).parts
    _expect(inside, directory, source, f"file reference {rel!r} leaves the directory")
    return str(rel)


def _find_backup(target: Path) -> Path | None:
    candidates = [p for p in _siblings(target, "bak") if p.is_dir() and _is_prompter_dir(p)]
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime)


def read_saved(path: str | os.PathLike[str]) -> SavedPrompter:
    """Read and check a saved prompter directory (new or 0.1.x format) without building a Prompter."""
    directory = Path(path).expanduser()
    if not directory.exists():
        backup = _find_backup(directory.absolute())
        if backup is not None:
            warnings.warn(
                f"{str(directory)!r} does not exist, but a save into it was interrupted; loading the previous "
                f"save from {str(backup)!r}. Save the prompter again to complete it.",
                UserWarning,
                stacklevel=4,
            )
            directory = backup
        else:
            raise PersistenceError(
                f"no saved prompter at {str(directory)!r} (resolved to {str(directory.absolute())!r}): the "
                "directory does not exist. Check the path, or create it with prompter.save(path)."
            )
    if not directory.is_dir():
        raise PersistenceError(
            f"{str(directory)!r} is a file; Prompter.load() expects the directory written by Prompter.save()"
        )
    if (directory / MANIFEST).exists():
        return _read_current(directory)
    if (directory / LEGACY_METADATA).exists():
        return _read_legacy(directory)
    raise PersistenceError(
        f"{str(directory)!r} is not a saved dspydantic prompter: it has no {MANIFEST} (nor the "
        f"{LEGACY_METADATA} of dspydantic 0.1.x). Point load() at the directory you passed to save()."
    )


def _read_current(directory: Path) -> SavedPrompter:
    manifest = _read_json(directory, MANIFEST, what="its manifest")
    _expect(isinstance(manifest, dict), directory, MANIFEST, "not a JSON object")
    _expect(manifest.get("format") == FORMAT, directory, MANIFEST, f"format is {manifest.get('format')!r}")
    version = manifest.get("format_version")
    _expect(isinstance(version, int) and version >= 1, directory, MANIFEST, f"format_version {version!r}")
    if version > FORMAT_VERSION:
        from . import __version__

        raise PersistenceError(
            f"{str(directory)!r} was saved by dspydantic {manifest.get('library_version', '?')} in format "
            f"version {version}; this dspydantic ({__version__}) reads format versions up to {FORMAT_VERSION}. "
            "Upgrade: pip install -U dspydantic"
        )
    listed = manifest.get("files")
    _expect(isinstance(listed, dict), directory, MANIFEST, "no file list")
    contents: dict[str, bytes] = {}
    edited: list[str] = []
    for rel, meta in listed.items():
        rel = _safe_rel(directory, rel, MANIFEST)
        data = _read_bytes(directory, rel, what=f"{MANIFEST} lists it")
        expected = meta.get("sha256") if isinstance(meta, dict) else None
        if expected and _sha256(data) != expected:
            if rel.endswith(".json"):
                edited.append(rel)  # a hand edit is allowed; reported once the file has parsed
            else:
                raise PersistenceError(
                    f"{str(directory / rel)!r} is corrupt or truncated ({len(data)} bytes; its checksum does not "
                    "match the manifest). Restore the directory from your copy, or save the prompter again."
                )
        contents[rel] = data
    for required in (SCHEMA_FILE, PROMPTS_FILE):
        _expect(required in contents, directory, MANIFEST, f"{required} is not listed")

    schema = _read_json(directory, SCHEMA_FILE, what="the model schema", data=contents[SCHEMA_FILE])
    _expect(isinstance(schema, dict) and isinstance(schema.get("properties"), dict), directory, SCHEMA_FILE,
            "not an object schema")
    prompts = _read_json(directory, PROMPTS_FILE, what="the prompts", data=contents[PROMPTS_FILE])
    _expect(isinstance(prompts, dict) and isinstance(prompts.get("original"), dict), directory, PROMPTS_FILE,
            "no original prompt state")
    original = _state_from_json(prompts["original"], directory, contents)
    opt = prompts.get("optimized")
    current = _state_from_json(opt, directory, contents) if isinstance(opt, dict) else original
    report = None
    if REPORT_FILE in contents:
        report = _restore_report(_read_json(directory, REPORT_FILE, what="the report", data=contents[REPORT_FILE]))
    calibrator = None
    if CALIBRATOR_FILE in contents:
        calibrator = _read_calibrator(directory, contents[CALIBRATOR_FILE])

    for rel in edited:
        warnings.warn(
            f"{str(directory / rel)!r} was modified after it was saved (its checksum differs from the manifest)",
            UserWarning,
            stacklevel=5,
        )
    model: dict[str, Any] = manifest["model"] if isinstance(manifest.get("model"), dict) else {}
    lm: dict[str, Any] = manifest["lm"] if isinstance(manifest.get("lm"), dict) else {}
    saved_fp = model.get("fingerprint")
    if saved_fp and saved_fp != fingerprint(schema):
        warnings.warn(
            f"{str(directory / SCHEMA_FILE)!r} does not match the fingerprint in {MANIFEST} (edited by hand?)",
            UserWarning,
            stacklevel=5,
        )
    settings: dict[str, Any] = lm["settings"] if isinstance(lm.get("settings"), dict) else {}
    return SavedPrompter(
        path=directory,
        model_name=str(model.get("name") or "Model"),
        schema=schema,
        free_text=bool(model.get("free_text", False)),
        model_id=lm.get("model_id") or None,
        api_base=sanitize_api_base(lm.get("api_base")),
        settings=_check_settings(directory, {k: v for k, v in settings.items() if k in _SETTINGS}),
        original=original,
        current=current,
        report=report,
        calibrator=calibrator,
        library_version=manifest.get("library_version"),
        format_version=version,
    )


def _read_calibrator(directory: Path, data: bytes) -> Any:
    """The saved calibrator: plain numbers, checked field by field (never code, never a pickle)."""
    from .confidence.calibration import Calibrator

    raw = _read_json(directory, CALIBRATOR_FILE, what="the calibrator", data=data)
    try:
        return Calibrator.from_json(raw)
    except (ValueError, TypeError, KeyError) as exc:
        raise PersistenceError(
            f"{str(directory / CALIBRATOR_FILE)!r} is not a calibrator dspydantic wrote ({exc}). Delete the file "
            "(the prompter then reports uncalibrated confidences) or fit one again with prompter.calibrate(...)."
        ) from None


def _check_settings(directory: Path, settings: dict[str, Any]) -> dict[str, Any]:
    require = settings.get("require_grounding")
    ok = require is None or isinstance(require, bool) or (
        isinstance(require, list) and all(isinstance(p, str) for p in require)
    )
    _expect(ok, directory, MANIFEST, "require_grounding is neither a bool nor a list of field paths")
    samples = settings.get("confidence_samples")
    ok = samples is None or (
        isinstance(samples, int) and not isinstance(samples, bool) and 0 <= samples <= MAX_CONFIDENCE_SAMPLES
    )
    _expect(ok, directory, MANIFEST, f"confidence_samples is not an int between 0 and {MAX_CONFIDENCE_SAMPLES}")
    temperature = settings.get("sample_temperature")
    ok = temperature is None or sample_temperature_ok(temperature)
    _expect(ok, directory, MANIFEST, "sample_temperature is not a number in (0, 2]")
    return settings


def _state_from_json(data: dict[str, Any], directory: Path, contents: Mapping[str, bytes]) -> PromptState:
    def text(key: str) -> str | None:
        value = data.get(key)
        _expect(value is None or isinstance(value, str), directory, PROMPTS_FILE, f"{key} is not a string")
        return value

    descriptions = data.get("field_descriptions") or {}
    _expect(isinstance(descriptions, dict), directory, PROMPTS_FILE, "field_descriptions is not an object")
    demos_raw = data.get("demos") or []
    _expect(isinstance(demos_raw, list), directory, PROMPTS_FILE, "demos is not a list")
    demos = []
    for raw in demos_raw:
        _expect(isinstance(raw, dict) and isinstance(raw.get("output"), dict), directory, PROMPTS_FILE,
                "a demo has no output object")
        inp = raw.get("input")
        if isinstance(inp, list):
            parts: list[dict[str, Any]] = []
            for part in inp:
                _expect(isinstance(part, dict), directory, PROMPTS_FILE, "a demo input part is not an object")
                if part.get("type") == "image_file":
                    rel = _safe_rel(directory, part.get("path"), PROMPTS_FILE)
                    blob = contents.get(rel)
                    if blob is None:
                        blob = _read_bytes(directory, rel, what="a demo refers to it")
                    mime = str(part.get("mime") or sniff_image_mime(blob) or "image/png")
                    url = data_url(blob, mime)
                    extra = part.get("image_url") if isinstance(part.get("image_url"), dict) else {}
                    parts.append({"type": "image_url", "image_url": {"url": url, **extra}})
                else:
                    parts.append(part)
            demo_input: str | list[dict[str, Any]] = parts
        else:
            _expect(isinstance(inp, str), directory, PROMPTS_FILE, "a demo input is neither text nor parts")
            demo_input = inp
        demos.append(Demo(input=demo_input, output=dict(raw["output"])))
    return PromptState(
        system_prompt=text("system_prompt"),
        instruction_prompt=text("instruction_prompt"),
        field_descriptions={str(k): str(v) for k, v in descriptions.items()},
        demos=tuple(demos),
    )


def _restore_report(data: Any) -> Any:
    """The saved report as the optimize package's object when it can rebuild one, else the plain JSON."""
    try:
        from .optimize import report as report_module  # type: ignore[attr-defined,unused-ignore]
    except Exception:  # optional: the report stays plain JSON
        return data
    for name in ("OptimizationResult", "OptimizationReport"):
        cls = getattr(report_module, name, None)
        from_json = getattr(cls, "from_json", None)
        if callable(from_json):
            try:
                return from_json(data)
            except Exception:  # an old or foreign report stays plain JSON
                return data
    return data


# -- dspydantic 0.1.x --------------------------------------------------------------------------------


def _legacy_demo(raw: Any) -> Demo | None:
    if not isinstance(raw, dict):
        return None
    inp: dict[str, Any] = raw["input_data"] if isinstance(raw.get("input_data"), dict) else {}
    out = raw.get("expected_output")
    if isinstance(out, str):
        out = {"output": out}
    if not isinstance(out, dict):
        return None  # an unlabelled example cannot be shown as a demonstration
    text = inp.get("text")
    images = inp.get("images") if isinstance(inp.get("images"), list) else []
    if not images:
        return Demo(input=str(text), output=out) if isinstance(text, str) and text else None
    parts: list[dict[str, Any]] = []
    if isinstance(text, str) and text:
        parts.append({"type": "text", "text": text})
    for img in images:
        if not isinstance(img, str):
            continue
        if img.startswith("data:"):
            url = img
        else:
            try:
                blob, _ = decode_base64(img, "a 0.1 demo image")
            except ConfigurationError:
                continue
            url = data_url(blob, sniff_image_mime(blob) or "image/png")
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return Demo(input=parts, output=out) if parts else None


def _read_legacy(directory: Path) -> SavedPrompter:
    meta = _read_json(directory, LEGACY_METADATA, what="the 0.1.x metadata")
    _expect(isinstance(meta, dict), directory, LEGACY_METADATA, "not a JSON object")
    version = str(meta.get("version") or "0")
    if not version.startswith("0."):
        raise PersistenceError(
            f"{str(directory / LEGACY_METADATA)!r} says dspydantic {version}; this dspydantic reads saves of "
            "0.1.x and its own format. Save the prompter again with the dspydantic it was made with, or upgrade."
        )
    state = _read_json(directory, LEGACY_STATE, what="the 0.1.x optimized state")
    _expect(isinstance(state, dict), directory, LEGACY_STATE, "not a JSON object")
    raw_schema = _read_json(directory, LEGACY_SCHEMA, what="the 0.1.x model schema")
    _expect(isinstance(raw_schema, dict) and isinstance(raw_schema.get("properties"), dict), directory,
            LEGACY_SCHEMA, "not an object schema")
    schema = _strip_titles(inline_schema(raw_schema))
    name = str(raw_schema.get("title") or "Model")

    paths = legacy_paths(schema)
    descriptions: dict[str, str] = {}
    raw_desc = state.get("optimized_descriptions") or {}
    _expect(isinstance(raw_desc, dict), directory, LEGACY_STATE, "optimized_descriptions is not an object")
    for old, desc in raw_desc.items():
        path = paths.get(str(old))
        if path is None or not isinstance(desc, str):
            continue
        if desc == path.rsplit(".", 1)[-1].replace("[]", "").replace("{}", ""):
            continue  # 0.1.x wrote the field name where a field had no description
        descriptions[path] = desc
    demos = [d for d in (_legacy_demo(x) for x in state.get("optimized_demos") or []) if d is not None]

    def text(key: str) -> str | None:
        value = state.get(key)
        return value if isinstance(value, str) and value else None

    config: dict[str, Any] = meta["model_config"] if isinstance(meta.get("model_config"), dict) else {}
    if "api_key" in config:
        warnings.warn(
            f"{str(directory / LEGACY_METADATA)!r} contains an api_key; it is ignored (pass api_key= to "
            "load()). Remove it from the file: keys do not belong in saved prompters.",
            UserWarning,
            stacklevel=5,
        )
    current = PromptState(
        system_prompt=text("optimized_system_prompt"),
        instruction_prompt=text("optimized_instruction_prompt"),
        field_descriptions=descriptions,
        demos=tuple(demos),
    )
    free_text = set(schema.get("properties", {})) == {"output"} and name in ("OutputModel", "Output")
    return SavedPrompter(
        path=directory,
        model_name=name,
        schema=schema,
        free_text=free_text,
        model_id=str(meta.get("model_id") or "") or None,
        api_base=sanitize_api_base(config.get("api_base")),
        original=PromptState(),
        current=current,
        library_version=version,
        legacy=True,
    )


# ==================================================================================================
# schema drift


def _field_nodes(schema: dict[str, Any]) -> dict[str, tuple[dict[str, Any], bool]]:
    """path -> (schema node, required) for every field of an inlined object schema."""
    return {path: (node, required) for path, node, required in walk_fields(schema)}


def _variants(node: Any) -> list[dict[str, Any]]:
    if not isinstance(node, dict):
        return [{}]
    alts = node.get("anyOf") or node.get("oneOf")
    if isinstance(alts, list) and alts:
        out: list[dict[str, Any]] = []
        for a in alts:
            out.extend(_variants(a))
        return out
    t = node.get("type")
    if isinstance(t, list):
        return [{**node, "type": x} for x in t]
    return [node]


_SAME, _WIDER, _CHANGED = 0, 1, 2


def _values(v: dict[str, Any]) -> list[Any] | None:
    if "const" in v:
        return [v["const"]]
    if isinstance(v.get("enum"), list):
        return list(v["enum"])
    return None


def _fit_one(s: dict[str, Any], c: dict[str, Any]) -> int:
    """How saved variant ``s`` fits current variant ``c``: same, widened, or changed (does not fit)."""
    if not s or not c:  # "any" on either side
        return _SAME if s == c else (_WIDER if not c else _CHANGED)
    if "$ref" in s or "$ref" in c:
        return _SAME if s.get("$ref") == c.get("$ref") else _CHANGED
    st, ct = s.get("type"), c.get("type")
    result = _SAME
    if st != ct:
        if st == "integer" and ct == "number":
            result = _WIDER
        elif st is None and ct is None:
            pass
        else:
            return _CHANGED
    sf, cf = s.get("format"), c.get("format")
    if sf != cf:
        if cf is None:
            result = _WIDER
        else:
            return _CHANGED
    sv, cv = _values(s), _values(c)
    if sv != cv:
        if cv is None:
            result = _WIDER
        elif sv is None or not all(x in cv for x in sv):
            return _CHANGED
        elif sorted(map(repr, sv)) != sorted(map(repr, cv)):
            result = _WIDER
    if st == "array":
        result = max(result, _fit(s.get("items", {}), c.get("items", {})))
    if st == "object":
        sp, cp = "properties" in s, "properties" in c
        if sp != cp:
            return _CHANGED
        if not sp:
            sa, ca = s.get("additionalProperties"), c.get("additionalProperties")
            if isinstance(sa, dict) or isinstance(ca, dict):
                result = max(result, _fit(sa if isinstance(sa, dict) else {}, ca if isinstance(ca, dict) else {}))
    return result


def _fit(saved: Any, current: Any) -> int:
    sv, cv = _variants(saved), _variants(current)
    worst = _SAME
    for s in sv:
        best = min((_fit_one(s, c) for c in cv), default=_CHANGED)
        if best == _CHANGED:
            return _CHANGED
        worst = max(worst, best)
    if worst == _SAME and len(cv) > len(sv):
        worst = _WIDER
    return worst


def _constraints(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, v in enumerate(_variants(node)):
        for k in _CONSTRAINT_KEYS:
            if k in v:
                out[f"{i}:{k}"] = v[k]
    for k in _CONSTRAINT_KEYS:
        if k in node:
            out[k] = node[k]
    return out


def schema_drift(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Differences between a saved and a current (inlined) schema: ``(compatible, incompatible)``.

    Compatible: an added optional field, a changed description, default or constraint, a widened type
    (``int`` -> ``float``, a value added to a ``Literal``, ``X`` -> ``X | None``), a field that became
    optional. Incompatible: a removed field, a changed type, a new required field, a field that became
    required. Each entry names the field by its dotted path.
    """
    old, new = _field_nodes(saved), _field_nodes(current)
    compatible: list[str] = []
    incompatible: list[str] = []
    broken: set[str] = set()  # paths reported removed/changed: their sub-fields are not reported again
    for path, (node, required) in old.items():
        if any(a in broken for a in ancestor_paths(path)):
            continue
        if path not in new:
            incompatible.append(f"{path}: removed")
            broken.add(path)
            continue
        cnode, crequired = new[path]
        fit = _fit(node, cnode)
        if fit == _CHANGED:
            incompatible.append(f"{path}: type changed from {_type_hint(node)} to {_type_hint(cnode)}")
            broken.add(path)
            continue
        if fit == _WIDER:
            compatible.append(f"{path}: type widened from {_type_hint(node)} to {_type_hint(cnode)}")
        if crequired and not required:
            incompatible.append(f"{path}: became required")
        elif required and not crequired:
            compatible.append(f"{path}: became optional")
        if node.get("description") != cnode.get("description"):
            compatible.append(f"{path}: description changed")
        if node.get("default") != cnode.get("default"):
            compatible.append(f"{path}: default changed")
        if _constraints(node) != _constraints(cnode):
            compatible.append(f"{path}: constraints changed")
    added = {p for p in new if p not in old}
    for path in new:
        if path not in added or any(a in added or a in broken for a in ancestor_paths(path)):
            continue  # a sub-field of a new (or changed) field is reported with it
        if new[path][1]:
            incompatible.append(f"{path}: new required field")
        else:
            compatible.append(f"{path}: added optional field")
    return compatible, incompatible


# ==================================================================================================
# load: building the Prompter


def load_prompter(
    cls: type[Prompter],
    path: str | os.PathLike[str],
    model: type[BaseModel] | None = None,
    model_id: str | None = None,
    **kwargs: Any,
) -> Prompter:
    """Build a Prompter from a saved directory (see :meth:`Prompter.load`)."""
    clash = [k for k in _PROMPT_KWARGS if k in kwargs]
    if clash:
        raise ConfigurationError(
            f"load() restores {', '.join(clash)} from the saved directory; to change them, set "
            "prompter.state = prompter.state.replace(...) after loading"
        )
    saved = read_saved(path)
    base_schema: dict[str, Any] | None = None
    use_model: type[BaseModel] | None
    if model is not None:
        use_model = ensure_model(model)
        compatible, incompatible = schema_drift(saved.schema, model_schema(use_model))
        if incompatible:
            raise PersistenceError(
                f"{use_model.__name__} does not match the model the prompter at {str(saved.path)!r} was saved "
                f"with ({saved.model_name}):\n  - " + "\n  - ".join(incompatible) + "\nIts prompts, field "
                "descriptions and demos were made for the saved fields. Load it with the model it was saved "
                "with (or without model= to rebuild that model), or build a new Prompter for the changed "
                "model, optimize it and save it again."
            )
        if compatible:
            warnings.warn(
                SchemaDriftWarning(
                    f"{use_model.__name__} differs from the model the prompter at {str(saved.path)!r} was "
                    "saved with, in compatible ways:\n  - " + "\n  - ".join(compatible) + "\nThe saved prompts "
                    "are used as they are (saved field descriptions override the model's)."
                ),
                stacklevel=3,
            )
    elif saved.free_text:
        use_model = None
    else:
        from ._rebuild import rebuild_model

        use_model = rebuild_model(saved.schema, saved.model_name)
        base_schema = copy.deepcopy(saved.schema)

    ctor: dict[str, Any] = dict(saved.settings)
    lm = kwargs.get("lm")
    if model_id is None and lm is None:
        model_id = saved.model_id
    # the saved endpoint belongs to the saved model id: never send another model to it
    if saved.api_base and lm is None and model_id == saved.model_id:
        ctor["api_base"] = saved.api_base
    if lm is not None:
        ctor.pop("timeout", None)
    ctor.update(kwargs)
    ctor.update(
        system_prompt=saved.original.system_prompt,
        instruction_prompt=saved.original.instruction_prompt,
        field_descriptions=dict(saved.original.field_descriptions),
        demos=saved.original.demos,
    )
    prompter = cls(use_model, model_id, **ctor)
    if base_schema is not None:
        # the LM is shown exactly the saved schema, even where the rebuilt class would render it differently
        prompter.set_base_schema(base_schema)
    original = prompter.state
    prompter.state = saved.current if saved.current != saved.original else original
    prompter._original_state = original
    prompter.optimization_result = saved.report
    if saved.calibrator is not None and "calibrator" not in kwargs:
        prompter.calibrator = saved.calibrator
    return prompter
