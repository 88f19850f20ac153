"""The saved prompter format (version 1): the files a save writes and how a load reads them back.

Layout::

    <dir>/dspydantic.json   manifest: format, versions, model name + schema fingerprint, LM id and settings,
                            and the sha256 and size of every other file
    <dir>/schema.json       the model's JSON schema (``$ref``s inlined, as the LM sees it)
    <dir>/prompts.json      original and optimized prompt state (:mod:`.state`: images are references to
                            files in demos/)
    <dir>/demos/0001.png    demo images, one file each, shared by prompts.json and report.json
    <dir>/report.json       the optimization report (only when there is one; its prompt states are written
                            by the same codec and refer to the same demo files)
    <dir>/calibrator.json   the field-confidence calibrator (only when one was fitted; plain numbers)

Nothing executable and no secret is written: never an API key, and ``api_base`` loses its userinfo and
query. A load reads the manifest, then only the files it lists, each a regular file inside the directory
whose sha256 matches (:mod:`.files`); anything else is a :class:`~dspydantic.PersistenceError`.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import inspect
import json
import re
from typing import TYPE_CHECKING, Any

from .._schema import default_descriptions, fingerprint
from ..errors import PersistenceError
from .files import SavedDir, check_rel, check_schema, expect, read_json
from .saved import SavedPrompter, sanitize_api_base
from .settings import check_settings, prompter_settings
from .state import DEMO_DIR, ImageFiles, StateFormatError, jsonable, state_from_json, state_to_json

if TYPE_CHECKING:
    from .._prompter import Prompter

__all__ = [
    "CALIBRATOR_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "PROMPTS_FILE",
    "REPORT_FILE",
    "SCHEMA_FILE",
    "read_current",
    "render_files",
]

FORMAT = "dspydantic.prompter"
FORMAT_VERSION = 1
MANIFEST = "dspydantic.json"
SCHEMA_FILE = "schema.json"
PROMPTS_FILE = "prompts.json"
REPORT_FILE = "report.json"
CALIBRATOR_FILE = "calibrator.json"
_KNOWN_FILES = (SCHEMA_FILE, PROMPTS_FILE, REPORT_FILE, CALIBRATOR_FILE)
_DEMO_FILE = re.compile(rf"^{DEMO_DIR}/[A-Za-z0-9_-]{{1,64}}\.[A-Za-z0-9]{{1,8}}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: the most bytes a load reads from one directory (every listed file together)
MAX_TOTAL_BYTES = 256 * 1024 * 1024
#: the largest manifest a load reads (it lists files and settings; demo images are files of their own)
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dumps(obj: Any, what: str) -> bytes:
    try:
        text = json.dumps(obj, ensure_ascii=False, indent=2, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PersistenceError(f"could not save the prompter: {what} is not JSON-serializable ({exc})") from exc
    return (text + "\n").encode("utf-8")


# ==================================================================================================
# save


def _report_json(prompter: Prompter, images: ImageFiles) -> Any:
    result = getattr(prompter, "optimization_result", None)
    if result is None:
        return None
    to_json = getattr(result, "to_json", None)
    if not callable(to_json):
        return None
    try:
        takes_images = "images" in inspect.signature(to_json).parameters
    except (TypeError, ValueError):
        takes_images = False
    # the report's prompt states go through the same codec as prompts.json: images become the same files
    return jsonable(to_json(images=images) if takes_images else to_json(), "the optimization report")


def render_files(prompter: Prompter) -> dict[str, bytes]:
    """Every file of the saved directory, in memory (nothing touches the disk before this succeeds)."""
    from .. import __version__

    schema = copy.deepcopy(prompter._base_schema)
    images = ImageFiles()
    original = prompter._original_state
    current = prompter.state
    prompts = {
        "original": state_to_json(original, images, "original"),
        "optimized": None if current == original else state_to_json(current, images, "optimized"),
        # what the LM is shown for each field (model descriptions + overrides): for reading, not loaded
        "effective_field_descriptions": {**default_descriptions(schema), **dict(current.field_descriptions)},
    }
    files: dict[str, bytes] = {
        SCHEMA_FILE: _dumps(schema, "the model schema"),
        PROMPTS_FILE: _dumps(prompts, "the prompts"),
    }
    report = _report_json(prompter, images)
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
            "settings": prompter_settings(prompter),
        },
        "optimized": current != original,
        "files": {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in sorted(files.items())},
    }
    files[MANIFEST] = _dumps(manifest, "the manifest")
    return files


# ==================================================================================================
# load


def _listed(saved_dir: SavedDir, manifest: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """The files the manifest lists that this format reads: relative path -> (sha256, size)."""
    directory = saved_dir.path
    listed: Any = manifest.get("files")
    expect(isinstance(listed, dict), directory, MANIFEST, "no file list")
    out: dict[str, tuple[str, int]] = {}
    for rel, meta in listed.items():
        rel = check_rel(directory, rel, MANIFEST)
        expect(isinstance(meta, dict), directory, MANIFEST, f"no checksum for {rel!r}")
        digest, size = meta.get("sha256"), meta.get("bytes")
        expect(isinstance(digest, str) and bool(_SHA256.match(digest)), directory, MANIFEST,
               f"no sha256 for {rel!r}")
        expect(isinstance(size, int) and not isinstance(size, bool) and size >= 0, directory, MANIFEST,
               f"no size for {rel!r}")
        if rel in _KNOWN_FILES or _DEMO_FILE.match(rel):
            out[rel] = (digest, size)
        # any other name is left alone: never read
    total = sum(size for _, size in out.values())
    if total > MAX_TOTAL_BYTES:
        raise PersistenceError(
            f"{str(directory / MANIFEST)!r} lists {total} bytes of files; a saved prompter holds at most "
            f"{MAX_TOTAL_BYTES} (nothing was read)"
        )
    return out


def _read_verified(saved_dir: SavedDir, rel: str, digest: str, size: int) -> bytes:
    from .files import MAX_FILE_BYTES

    if size > MAX_FILE_BYTES:
        raise PersistenceError(f"{str(saved_dir.path / rel)!r} is larger than {MAX_FILE_BYTES} bytes")
    data = saved_dir.read(rel, what=f"{MANIFEST} lists it", limit=size)
    if len(data) != size or _sha256(data) != digest:
        raise PersistenceError(
            f"{str(saved_dir.path / rel)!r} is corrupt or truncated, or was changed after it was saved ("
            f"{len(data) if len(data) <= size else 'more than ' + str(size)} bytes; its checksum does not match "
            f"the manifest, {MANIFEST}). Restore the directory from your copy, or save the prompter again "
            "(to change prompts, load the prompter, set prompter.state and save it)."
        )
    return data


def read_current(saved_dir: SavedDir) -> SavedPrompter:
    directory = saved_dir.path
    raw_manifest = saved_dir.read(MANIFEST, what="its manifest", limit=_MAX_MANIFEST_BYTES)
    if len(raw_manifest) > _MAX_MANIFEST_BYTES:
        raise PersistenceError(f"{str(directory / MANIFEST)!r} is larger than {_MAX_MANIFEST_BYTES} bytes")
    manifest = read_json(saved_dir, MANIFEST, what="its manifest", data=raw_manifest)
    expect(isinstance(manifest, dict), directory, MANIFEST, "not a JSON object")
    expect(manifest.get("format") == FORMAT, directory, MANIFEST, f"format is {manifest.get('format')!r:.80}")
    version = manifest.get("format_version")
    expect(isinstance(version, int) and not isinstance(version, bool) and version >= 1, directory, MANIFEST,
           f"format_version {version!r:.40}")
    if version > FORMAT_VERSION:
        from .. import __version__

        raise PersistenceError(
            f"{str(directory)!r} was saved by dspydantic {str(manifest.get('library_version', '?'))[:40]} in "
            f"format version {version}; this dspydantic ({__version__}) reads format versions up to "
            f"{FORMAT_VERSION}. Upgrade: pip install -U dspydantic"
        )
    contents = {rel: _read_verified(saved_dir, rel, *meta) for rel, meta in _listed(saved_dir, manifest).items()}
    for required in (SCHEMA_FILE, PROMPTS_FILE):
        expect(required in contents, directory, MANIFEST, f"{required} is not listed")

    schema = check_schema(directory, SCHEMA_FILE,
                          read_json(saved_dir, SCHEMA_FILE, what="the model schema", data=contents[SCHEMA_FILE]))
    prompts = read_json(saved_dir, PROMPTS_FILE, what="the prompts", data=contents[PROMPTS_FILE])
    expect(isinstance(prompts, dict) and isinstance(prompts.get("original"), dict), directory, PROMPTS_FILE,
           "no original prompt state")
    images = {rel: data for rel, data in contents.items() if rel.startswith(f"{DEMO_DIR}/")}
    try:
        original = state_from_json(prompts["original"], images)
        opt = prompts.get("optimized")
        current = state_from_json(opt, images) if opt is not None else original
    except StateFormatError as exc:
        expect(False, directory, PROMPTS_FILE, str(exc))
        raise  # unreachable
    report = None
    if REPORT_FILE in contents:
        data = read_json(saved_dir, REPORT_FILE, what="the report", data=contents[REPORT_FILE])
        report = _restore_report(data, images)
    calibrator = None
    if CALIBRATOR_FILE in contents:
        calibrator = _read_calibrator(saved_dir, contents[CALIBRATOR_FILE])

    model, lm = manifest.get("model", {}), manifest.get("lm", {})
    if not isinstance(model, dict) or not isinstance(lm, dict):
        expect(False, directory, MANIFEST, "model or lm is not an object")
        raise AssertionError  # unreachable
    name = model.get("name", "Model")
    expect(isinstance(name, str) and name.isidentifier() and len(name) <= 200, directory, MANIFEST,
           f"model name {name!r:.80}")
    free_text = model.get("free_text", False)
    expect(isinstance(free_text, bool), directory, MANIFEST, "free_text is not a bool")
    saved_fp = model.get("fingerprint")
    expect(saved_fp is None or saved_fp == fingerprint(schema), directory, SCHEMA_FILE,
           f"the schema does not match the fingerprint in {MANIFEST}")
    model_id, api_base = lm.get("model_id"), lm.get("api_base")
    expect(model_id is None or (isinstance(model_id, str) and len(model_id) <= 300), directory, MANIFEST,
           "model_id is not a string")
    expect(api_base is None or isinstance(api_base, str), directory, MANIFEST, "api_base is not a string")
    library_version = manifest.get("library_version")
    return SavedPrompter(
        path=directory,
        model_name=name,
        schema=schema,
        free_text=free_text,
        model_id=model_id or None,
        api_base=sanitize_api_base(api_base),
        settings=check_settings(lm.get("settings", {}), str(directory / MANIFEST)),
        original=original,
        current=current,
        report=report,
        calibrator=calibrator,
        library_version=library_version if isinstance(library_version, str) else None,
        format_version=version,
    )


def _read_calibrator(saved_dir: SavedDir, data: bytes) -> Any:
    """The saved calibrator: plain numbers, checked field by field (never code, never a pickle)."""
    from ..confidence.calibration import Calibrator

    raw = read_json(saved_dir, CALIBRATOR_FILE, what="the calibrator", data=data)
    try:
        return Calibrator.from_json(raw)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise PersistenceError(
            f"{str(saved_dir.path / CALIBRATOR_FILE)!r} is not a calibrator dspydantic wrote ({exc}). Delete the "
            "file (the prompter then reports uncalibrated confidences) or fit one again with prompter.calibrate(...)."
        ) from None


def _restore_report(data: Any, images: dict[str, bytes]) -> Any:
    """The saved report as the optimize package's object when it can rebuild one, else the plain JSON."""
    try:
        from ..optimize import report as report_module
    except Exception:  # optional: the report stays plain JSON
        return data
    for name in ("OptimizationResult", "OptimizationReport"):
        cls = getattr(report_module, name, None)
        from_json = getattr(cls, "from_json", None)
        if callable(from_json):
            try:
                return from_json(data, images=images)
            except Exception:  # an old or foreign report stays plain JSON
                return data
    return data
