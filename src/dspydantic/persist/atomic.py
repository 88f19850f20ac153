"""Write a whole directory atomically, and read one while no writer swaps it.

:func:`write_directory` writes every file to a temporary sibling directory, fsyncs it, then swaps it in
with two renames under an exclusive lock on the parent directory; any failure leaves the previous
directory as it was. :func:`reading` holds the shared side of the same lock, so a reader never sees a
half-swapped directory. Nothing here knows what the files mean: the caller says which existing
directories may be replaced.

The module-level steps (``_write_file``, ``_rename``) are looked up at call time so tests can simulate a
failure at any step.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from ..errors import PersistenceError

__all__ = ["find_backup", "reading", "resolve_target", "write_directory"]

_STALE_TMP_SECONDS = 3600.0


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
def _dir_lock(parent: Path, name: str, *, shared: bool = False) -> Iterator[None]:
    """An advisory lock on ``parent`` itself (no lock file on POSIX): exclusive for a swap, shared for a read."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: writers serialise on a lock file, readers do not lock
        if shared:
            yield
            return
        from filelock import FileLock

        with FileLock(str(parent / f".{name}.lock"), timeout=120):
            yield
        return
    try:
        fd = os.open(parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        if not shared:
            raise
        yield  # a parent we may not open (no read permission): read without the lock
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        except OSError:
            if not shared:
                raise
            # a filesystem without flock: read without the lock
        yield
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def reading(path: Path) -> contextlib.AbstractContextManager[None]:
    """Hold this while reading the directory ``path``: no :func:`write_directory` swaps it meanwhile."""
    return _dir_lock(path.parent, path.name, shared=True)


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
    """Remove temp dirs of writes that died: their process is gone, or they are over an hour old."""
    now = time.time()
    prefix = f".{target.name}.tmp-"
    for p in _siblings(target, "tmp"):
        pid_text = p.name[len(prefix):].split("-", 1)[0]
        dead = pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text))
        with contextlib.suppress(OSError):
            if dead or now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)


def find_backup(target: Path, is_ours: Callable[[Path], bool]) -> Path | None:
    """The newest previous directory a write killed between its two renames left beside ``target``."""
    candidates = [p for p in _siblings(target, "bak") if p.is_dir() and not p.is_symlink() and is_ours(p)]
    if not candidates:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime)


def resolve_target(path: str | os.PathLike[str], what: str) -> Path:
    """The absolute directory a write to ``path`` replaces: through a symlink, the directory it points to
    (the link itself is never replaced); a dangling link is refused."""
    target = Path(path).expanduser()
    if target.name in ("", ".", ".."):
        raise PersistenceError(f"cannot save {what} to {str(path)!r}: give a directory name such as './my_prompter'")
    target = target.absolute()
    if target.is_symlink():
        real = Path(os.path.realpath(target))
        if not real.is_dir():
            raise PersistenceError(
                f"cannot save {what} to {str(target)!r}: it is a symbolic link to {str(real)!r}, which is not an "
                "existing directory. Save to the directory itself, or remove the link."
            )
        target = real
    return target


def _check_replaceable(target: Path, is_ours: Callable[[Path], bool], what: str) -> None:
    """A write may replace nothing, an empty directory, or a directory ``is_ours`` accepts; never anything else."""
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise PersistenceError(f"cannot save {what} to {str(target)!r}: a file with that name exists")
    if any(target.iterdir()) and not is_ours(target):
        raise PersistenceError(
            f"refusing to replace {str(target)!r}: it is a non-empty directory that is not {what}. "
            "Save to a new path, or remove that directory first."
        )


def write_directory(
    target: Path, files: Mapping[str, bytes], *, is_ours: Callable[[Path], bool], what: str
) -> None:
    """Replace the directory ``target`` (see :func:`resolve_target`) by ``files`` (relative path -> bytes),
    atomically; the previous directory survives any failure."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PersistenceError(f"cannot create the directory {str(parent)!r} to save into: {exc}") from exc
    _check_replaceable(target, is_ours, what)
    _clean_stale_tmp(target)
    # not tempfile.mkdtemp: its 0700 mode would become the saved directory's; mkdir honours the umask
    tmp = parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    try:
        tmp.mkdir()
    except OSError as exc:
        raise PersistenceError(f"cannot write in {str(parent)!r}: {exc}") from exc
    old: Path | None = None
    try:
        subdirs = set()
        for rel, data in files.items():
            dest = tmp / rel
            if dest.parent != tmp:
                dest.parent.mkdir(parents=True, exist_ok=True)
                subdirs.add(dest.parent)
            _write_file(dest, data)
        for sub in sorted(subdirs):
            _fsync_dir(sub)
        _fsync_dir(tmp)
        with _dir_lock(parent, target.name):
            old = _swap(tmp, target, is_ours, what)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, PersistenceError) or not isinstance(exc, Exception):
            raise
        raise PersistenceError(
            f"could not save {what} to {str(target)!r} ({type(exc).__name__}: {exc}); "
            "the previous save there, if any, is unchanged"
        ) from exc
    if old is not None:  # no reader can reach it any more: remove it outside the lock
        shutil.rmtree(old, ignore_errors=True)


def _swap(tmp: Path, target: Path, is_ours: Callable[[Path], bool], what: str) -> Path | None:
    """Move ``tmp`` into place as ``target``; the old ``target`` survives any failure. Returns the old
    directory (moved aside) for the caller to remove."""
    parent = target.parent
    old_backups = _siblings(target, "bak")  # left by a write that was killed between its two renames
    backup: Path | None = None
    if target.exists():
        _check_replaceable(target, is_ours, what)
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
    else:
        _rename(tmp, target)
        _fsync_dir(parent)
    for stale in old_backups:
        shutil.rmtree(stale, ignore_errors=True)
    return backup
