"""The prompters a service serves: their names (part of the URL), loading, and whether their LM is reachable."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from .._prompter import Prompter
from ..errors import ConfigurationError, LMError
from ..lm.transport import Transport
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


def _transport(backend: Any) -> Transport | None:
    """The HTTP transport under ``backend`` (through wrappers such as the tracing one), if it calls over HTTP."""
    inner = getattr(backend, "inner", None)
    if inner is not None and inner is not backend:
        return _transport(inner)
    transport = getattr(backend, "transport", None)
    return transport if isinstance(transport, Transport) else None


async def _unreachable(transport: Transport, timeout: float) -> str | None:
    """None when the LM's endpoint answers a ``GET /models`` through the backend's own transport (any HTTP
    status will do: something is serving there; the same proxies, TLS and typed errors as every call), else
    why not (the transport's redacted message)."""
    try:
        await transport.arequest("GET", "/models", timeout=timeout)
    except LMError as exc:
        return str(exc)
    return None


def _label(transport: Transport) -> str:
    parts = urlsplit(transport.base_url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
