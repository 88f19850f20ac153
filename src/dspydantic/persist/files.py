"""Reading a saved directory that may come from someone else: nothing outside it, nothing but regular files.

A :class:`SavedDir` opens the directory once and reads every file relative to that descriptor, one path
component at a time, never following a symbolic link (``O_NOFOLLOW`` on every component): a symlinked file
or folder, a FIFO, a device or a socket is a :class:`~dspydantic.PersistenceError`, and an ``lstat``
before the ``open`` (with ``O_NONBLOCK``) means a FIFO can never block the load. Files are read up to a
size limit, JSON up to a nesting depth: whatever a file holds, the reader raises ``PersistenceError``.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import PersistenceError

__all__ = [
    "MAX_FILE_BYTES", "MAX_JSON_DEPTH", "SavedDir", "check_rel", "check_schema", "expect", "parse_json", "read_json",
]

#: the largest file a saved directory may hold (a demo image, a prompts.json)
MAX_FILE_BYTES = 64 * 1024 * 1024
#: the deepest nesting of JSON arrays and objects a saved file may hold
MAX_JSON_DEPTH = 128

_FOLLOW_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
_FILE_FLAGS = _FOLLOW_FLAGS | getattr(os, "O_NONBLOCK", 0)
_DIR_FLAGS = _FOLLOW_FLAGS | getattr(os, "O_DIRECTORY", 0)
_HAS_DIR_FD = os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd


def expect(cond: bool, directory: Path, rel: str, detail: str) -> None:
    if not cond:
        raise PersistenceError(
            f"{str(directory / rel)!r} does not look like a file dspydantic wrote ({detail}). "
            "Point load() at a directory written by Prompter.save(), or save the prompter again."
        )


def check_rel(directory: Path, rel: Any, source: str) -> str:
    """``rel`` if it is a plain relative path inside the directory (``demos/0001.png``), else an error."""
    expect(isinstance(rel, str) and bool(rel) and len(rel) < 256, directory, source, f"bad file reference {rel!r}")
    parts = str(rel).split("/")
    inside = not str(rel).startswith("/") and all(p not in ("", ".", "..") for p in parts)
    expect(inside and "\\" not in rel and "\0" not in rel, directory, source,
           f"file reference {rel!r} leaves the directory")
    return str(rel)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


class SavedDir:
    """A saved prompter directory, opened once; see the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        if _HAS_DIR_FD:
            try:
                self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
            except OSError as exc:
                raise PersistenceError(f"cannot open the saved prompter directory {str(path)!r}: {exc}") from exc

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> SavedDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _refuse(self, rel: str, mode: int) -> PersistenceError:
        return PersistenceError(
            f"{str(self.path / rel)!r} is {_kind(mode)}; a saved prompter holds regular files only, and "
            "load() reads nothing outside its directory. Replace it by the file itself, or save the prompter again."
        )

    def _missing(self, rel: str, what: str) -> PersistenceError:
        return PersistenceError(
            f"{str(self.path / rel)!r} is missing: the saved prompter at {str(self.path)!r} is incomplete "
            f"({what}). Restore the directory from your copy, or save the prompter again."
        )

    def is_file(self, rel: str) -> bool:
        """Whether ``rel`` is a regular file here (a symlink or anything else is not)."""
        try:
            return stat.S_ISREG(self._lstat(rel).st_mode)
        except (OSError, PersistenceError):
            return False

    def lexists(self, rel: str) -> bool:
        """Whether anything (a symlink included) is at ``rel``."""
        try:
            self._lstat(rel)
        except (OSError, PersistenceError):
            return False
        return True

    def _lstat(self, rel: str) -> os.stat_result:
        if self._fd is None:
            return os.lstat(self.path / rel)
        *dirs, name = rel.split("/")
        fd = self._walk(rel, dirs)
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False)
        finally:
            if fd != self._fd:
                os.close(fd)

    def _walk(self, rel: str, dirs: list[str]) -> int:
        """A descriptor of the folder ``dirs`` below the directory, entering no symbolic link."""
        assert self._fd is not None
        fd = self._fd
        for i, comp in enumerate(dirs):
            try:
                st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    raise self._refuse("/".join(dirs[: i + 1]), st.st_mode)
                nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
            finally:
                if fd != self._fd:
                    os.close(fd)
            fd = nfd
        return fd

    def read(self, rel: str, *, what: str, limit: int = MAX_FILE_BYTES) -> bytes:
        """The bytes of the regular file ``rel`` (a checked relative path), at most ``limit`` + 1 of them."""
        try:
            st = self._lstat(rel)
            if not stat.S_ISREG(st.st_mode):
                raise self._refuse(rel, st.st_mode)
            if self._fd is None:  # no dir_fd on this platform: a path-based open that follows no final link
                fd = os.open(self.path / rel, _FILE_FLAGS)
            else:
                *dirs, name = rel.split("/")
                parent = self._walk(rel, dirs)
                try:
                    fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
                finally:
                    if parent != self._fd:
                        os.close(parent)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):  # swapped between the lstat and the open
                    raise self._refuse(rel, st.st_mode)
                chunks: list[bytes] = []
                left = limit + 1
                while left > 0:
                    chunk = os.read(fd, min(left, 1 << 20))
                    if not chunk:
                        break
                    chunks.append(chunk)
                    left -= len(chunk)
                return b"".join(chunks)
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise self._missing(rel, what) from None
        except PersistenceError:
            raise
        except OSError as exc:
            if exc.errno in (getattr(os, "ELOOP", -1), getattr(os, "ENOTDIR", -1)):
                raise PersistenceError(
                    f"{str(self.path / rel)!r} is (or is inside) a symbolic link; load() reads nothing outside "
                    "its directory"
                ) from None
            raise PersistenceError(f"cannot read {str(self.path / rel)!r}: {exc}") from exc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_deep(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def parse_json(data: bytes, where: str) -> Any:
    """``data`` parsed as JSON, or a :class:`PersistenceError` naming ``where`` (never a RecursionError)."""
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PersistenceError(
            f"{where!r} is not valid JSON ({exc}): the file is truncated or corrupt. "
            "Restore the directory from your copy, or save the prompter again."
        ) from None
    except RecursionError:
        value = None
        deep = True
    else:
        deep = _too_deep(value, MAX_JSON_DEPTH)
    if deep:
        raise PersistenceError(
            f"{where!r} nests JSON deeper than {MAX_JSON_DEPTH} levels; dspydantic never writes that. "
            "Save the prompter again."
        )
    return value


def read_json(directory: SavedDir, rel: str, *, what: str, data: bytes | None = None) -> Any:
    raw = directory.read(rel, what=what) if data is None else data
    if len(raw) > MAX_FILE_BYTES:
        raise PersistenceError(f"{str(directory.path / rel)!r} is larger than {MAX_FILE_BYTES} bytes")
    return parse_json(raw, str(directory.path / rel))


_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMAS = ("items", "additionalProperties", "not", "contains")


def schema_problem(schema: Any) -> str | None:
    """What makes ``schema`` something other than a JSON schema of objects, or None. Checks the shape
    every schema walker relies on: sub-schemas are objects (``additionalProperties``/``items`` may be bools),
    ``type`` a string or list of strings, ``required`` a list of strings, ``enum`` a list, ``$ref`` local."""
    if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
        return "not an object schema"
    stack: list[tuple[Any, str]] = [(schema, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, bool) and where.endswith(("additionalProperties", "items")):
            continue
        if not isinstance(node, dict):
            return f"the schema at {where or '/'} is not an object"
        t = node.get("type")
        if t is not None and not (isinstance(t, str) or (isinstance(t, list) and all(isinstance(x, str) for x in t))):
            return f"type at {where or '/'} is neither a string nor a list of strings"
        req = node.get("required")
        if req is not None and not (isinstance(req, list) and all(isinstance(x, str) for x in req)):
            return f"required at {where or '/'} is not a list of field names"
        if "enum" in node and not isinstance(node["enum"], list):
            return f"enum at {where or '/'} is not a list"
        ref = node.get("$ref")
        if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
            return f"$ref at {where or '/'} is not a reference inside the schema"
        for key in ("description", "title", "format", "pattern"):
            if key in node and not isinstance(node[key], str):
                return f"{key} at {where or '/'} is not a string"
        for key in _SUBSCHEMA_MAPS:
            if key in node:
                sub = node[key]
                if not isinstance(sub, dict):
                    return f"{key} at {where or '/'} is not an object"
                stack.extend((v, f"{where}/{key}/{k}") for k, v in sub.items())
        for key in _SUBSCHEMA_LISTS:
            if key in node:
                sub = node[key]
                if not isinstance(sub, list) or not sub:
                    return f"{key} at {where or '/'} is not a non-empty list"
                stack.extend((v, f"{where}/{key}/{i}") for i, v in enumerate(sub))
        for key in _SUBSCHEMAS:
            if key in node:
                stack.append((node[key], f"{where}/{key}"))
    return None


def check_schema(directory: Path, rel: str, schema: Any) -> dict[str, Any]:
    problem = schema_problem(schema)
    expect(problem is None, directory, rel, str(problem))
    return dict(schema)
