"""The prompters a service serves: their names (part of the URL), loading, and whether their LM is reachable."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from .._prompter import Prompter
from ..errors import ConfigurationError
from ._version import members as _members

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# --------------------------------------------------------------------------------------------------
# prompters


def check_name(name: Any) -> str:
    """A prompter name is part of its URL: 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"prompter name {name!r} must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or "
            "digit): it is part of the URL; name it with NAME=PATH"
        )
    return name


def load_prompters(prompters: Mapping[str, Any], **load_kwargs: Any) -> dict[str, Any]:
    """Names -> Prompter(-like) objects; paths are loaded with ``Prompter.load(path, **load_kwargs)``."""
    if not prompters:
        raise ConfigurationError("no prompters to serve")
    out: dict[str, Any] = {}
    for name, value in prompters.items():
        check_name(name)
        if isinstance(value, str | os.PathLike):
            value = Prompter.load(value, **load_kwargs)
        elif not hasattr(value, "apredict_with_confidence") or not hasattr(value, "model"):
            raise ConfigurationError(f"{name!r}: expected a Prompter, a Prompter-like object or a path, got "
                                     f"{type(value).__name__}")
        if isinstance(value, Prompter):
            value.name = name  # type: ignore[attr-defined]  # the name in log records
        out[name] = value
    return out


def _backends(obj: Any) -> Iterator[Any]:
    members = _members(obj)
    if members:
        for m in members:
            yield from _backends(m)
    elif hasattr(obj, "backend"):
        yield obj.backend


def _endpoint(backend: Any) -> tuple[str, int] | None:
    inner = getattr(backend, "inner", None)  # a wrapper (e.g. TracingBackend)
    if inner is not None and inner is not backend:
        return _endpoint(inner)
    base = getattr(backend, "base_url", None)
    if not isinstance(base, str):
        return None
    parts = urlsplit(base)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


async def _reachable(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to the LM's endpoint opens (no request is sent), else why not."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return None


