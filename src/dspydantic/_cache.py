"""Persistent request cache: an identical request makes no LM call, in this process and after a restart.

Entries live in SQLite (WAL mode, safe for several processes) with an in-memory LRU in front. The key is
the SHA-256 of the backend's ``cache_id`` (endpoint + model, never a secret) and the full request
(messages, response schema, temperature, max_tokens, logprobs flag). The API key is never part of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .lm._base import LMRequest, LMResponse


@runtime_checkable
class CacheBackend(Protocol):
    """What a user-supplied cache object needs: ``get``/``set`` of JSON-able dicts by string key."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def set(self, key: str, value: dict[str, Any]) -> None: ...


def default_cache_dir() -> Path:
    env = os.environ.get("DSPYDANTIC_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dspydantic"


def request_key(cache_id: str, request: LMRequest) -> str:
    payload = json.dumps(
        [
            cache_id,
            request.messages,
            request.json_schema,
            request.temperature,
            request.max_tokens,
            request.logprobs,
            request.extra,
        ],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def response_to_json(resp: LMResponse) -> dict[str, Any]:
    return {
        "text": resp.text,
        "prompt_tokens": resp.prompt_tokens,
        "completion_tokens": resp.completion_tokens,
        "finish_reason": resp.finish_reason,
        "token_logprobs": resp.token_logprobs,
        "token_texts": resp.token_texts,
    }


def response_from_json(data: dict[str, Any]) -> LMResponse:
    return LMResponse(
        text=data["text"],
        prompt_tokens=int(data.get("prompt_tokens") or 0),
        completion_tokens=int(data.get("completion_tokens") or 0),
        finish_reason=data.get("finish_reason"),
        token_logprobs=data.get("token_logprobs"),
        token_texts=data.get("token_texts"),
    )


class SQLiteCache:
    """A file-backed cache shared by threads and processes, with an in-memory LRU of ``memory_items``."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, memory_items: int = 4096) -> None:
        p = Path(path) if path is not None else default_cache_dir() / "requests.sqlite"
        if p.suffix == "" or p.is_dir():
            p = p / "requests.sqlite"
        p.parent.mkdir(parents=True, exist_ok=True)
        self.path = p
        self._memory: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._memory_items = memory_items
        self._lock = threading.Lock()
        self._local = threading.local()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
        )
        conn.commit()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                return hit
        row = self._conn().execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        value: dict[str, Any] = json.loads(row[0])
        self._remember(key, value)
        return value

    def set(self, key: str, value: dict[str, Any]) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO entries (key, value, created) VALUES (?, ?, ?)",
            (key, json.dumps(value, ensure_ascii=False), time.time()),
        )
        self._remember(key, value)

    def _remember(self, key: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._memory[key] = value
            self._memory.move_to_end(key)
            while len(self._memory) > self._memory_items:
                self._memory.popitem(last=False)

    def clear(self) -> None:
        self._conn().execute("DELETE FROM entries")
        with self._lock:
            self._memory.clear()

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM entries").fetchone()[0])


class MemoryCache:
    """An in-process cache (lost at exit); handy for tests and notebooks."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self._data.get(key)

    def set(self, key: str, value: dict[str, Any]) -> None:
        self._data[key] = value

    def __len__(self) -> int:
        return len(self._data)


_shared: dict[Path, SQLiteCache] = {}
_shared_lock = threading.Lock()


def resolve_cache(spec: Any) -> CacheBackend | None:
    """``False``/``None`` -> no cache; ``True`` -> the default file; a path -> that file; an object -> itself."""
    if spec is None or spec is False:
        return None
    if spec is True or isinstance(spec, (str, os.PathLike)):
        key = default_cache_dir() if spec is True else Path(spec)
        with _shared_lock:
            cache = _shared.get(key)
            if cache is None:
                cache = _shared[key] = SQLiteCache(key)
            return cache
    if isinstance(spec, CacheBackend):
        return spec
    from .errors import ConfigurationError

    raise ConfigurationError(f"cache must be a bool, a path or an object with get()/set(), got {spec!r}")
