"""Persistent response cache: an identical request makes no LM call, in this process and after a restart.

Entries live in SQLite (WAL mode, safe for several processes) with an in-memory LRU in front. What is stored,
and under which key, is the cache *layer's* business (:class:`dspydantic.lm.layers.CachingBackend`): only
answers that parsed and validated, keyed by endpoint, model, every model setting, schema and messages, never
the API key. A cache that cannot be opened (corrupt file, unwritable directory) is no cache, with one
:class:`~dspydantic.errors.CacheWarning`: an extraction never fails because of its cache.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import CacheWarning, ConfigurationError
from .lm._base import LMResponse

if TYPE_CHECKING:
    import sqlite3  # imported where a cache file is opened: a run without a cache never loads it

log = logging.getLogger("dspydantic")


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


def response_to_json(resp: LMResponse) -> dict[str, Any]:
    return {
        "text": resp.text,
        "prompt_tokens": resp.prompt_tokens,
        "completion_tokens": resp.completion_tokens,
        "finish_reason": resp.finish_reason,
        "token_logprobs": resp.token_logprobs,
        "token_texts": resp.token_texts,
        **({"choice_logprobs": resp.choice_logprobs} if resp.choice_logprobs else {}),
    }


def response_from_json(data: Any) -> LMResponse | None:
    """A cached answer, or ``None`` for an entry that does not look like one (treated as a miss)."""
    if not isinstance(data, dict) or not isinstance(data.get("text"), str):
        return None
    try:
        return LMResponse(
            text=data["text"],
            prompt_tokens=int(data.get("prompt_tokens") or 0),
            completion_tokens=int(data.get("completion_tokens") or 0),
            finish_reason=data.get("finish_reason"),
            token_logprobs=data.get("token_logprobs"),
            token_texts=_token_texts(data.get("token_texts"), data.get("token_logprobs")),
            choice_logprobs=_choice_logprobs(data.get("choice_logprobs")),
            cached=True,
        )
    except (TypeError, ValueError):
        return None


def _token_texts(texts: Any, logprobs: Any) -> list[str] | None:
    """The cached token texts when they are what the backend recorded (one string per log-probability),
    else ``None`` (the confidence then falls back to the whole answer's probabilities)."""
    ok = (
        isinstance(texts, list) and isinstance(logprobs, list) and len(texts) == len(logprobs)
        and all(isinstance(t, str) for t in texts)
    )
    return texts if ok else None


def _choice_logprobs(raw: Any) -> dict[str, dict[str, float]] | None:
    """Cached choice log-probabilities when they have their shape (path -> value -> number), else ``None``."""
    if not isinstance(raw, dict):
        return None
    ok = all(isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()) for v in raw.values())
    return {str(k): {str(a): float(b) for a, b in v.items()} for k, v in raw.items()} if ok else None


def cache_failed(where: str, exc: BaseException) -> None:
    """Say once (one :class:`CacheWarning`) that a cache failed and extraction goes on without it."""
    message = f"the response cache {where} failed ({type(exc).__name__}: {exc}); continuing without a cache"
    log.debug(message)
    warnings.warn(CacheWarning(message), stacklevel=3)


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
        conn.execute("SELECT 1 FROM entries LIMIT 1").fetchall()  # a corrupt file fails here, not mid-run

    def __repr__(self) -> str:
        return f"SQLiteCache({str(self.path)!r})"

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            import sqlite3

            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def get_memory(self, key: str) -> dict[str, Any] | None:
        """The in-memory LRU only (never touches the disk: safe on an event loop)."""
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
            return hit

    def get(self, key: str) -> dict[str, Any] | None:
        hit = self.get_memory(key)
        if hit is not None:
            return hit
        row = self._conn().execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            value: dict[str, Any] = json.loads(row[0])
        except ValueError:
            return None
        self.remember(key, value)
        return value

    def set(self, key: str, value: dict[str, Any]) -> None:
        self.remember(key, value)
        self._conn().execute(
            "INSERT OR REPLACE INTO entries (key, value, created) VALUES (?, ?, ?)",
            (key, json.dumps(value, ensure_ascii=False), time.time()),
        )

    def remember(self, key: str, value: dict[str, Any]) -> None:
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


_shared: dict[Path, SQLiteCache] = {}
_shared_lock = threading.Lock()


def resolve_cache(spec: Any) -> CacheBackend | None:
    """``False``/``None`` -> no cache; ``True`` -> the default file; a path -> that file; an object -> itself.

    A file that cannot be opened (corrupt, unwritable directory) -> no cache and one :class:`CacheWarning`.
    """
    if spec is None or spec is False:
        return None
    if spec is True or isinstance(spec, str | os.PathLike):
        key = default_cache_dir() if spec is True else Path(spec)
        with _shared_lock:
            cache = _shared.get(key)
            if cache is None:
                import sqlite3

                try:
                    cache = SQLiteCache(key)
                except (sqlite3.Error, OSError) as exc:
                    cache_failed(f"at {str(key)!r}", exc)
                    return None
                _shared[key] = cache
            return cache
    if isinstance(spec, CacheBackend):
        return spec
    raise ConfigurationError(f"cache must be a bool, a path or an object with get()/set(), got {spec!r}")
