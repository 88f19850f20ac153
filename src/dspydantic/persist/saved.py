"""What a saved prompter directory holds, whatever its format, before a Prompter is built from it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .._render import PromptState

__all__ = ["SavedPrompter", "sanitize_api_base"]


@dataclass
class SavedPrompter:
    """The content of a saved prompter directory (either format), checked, before a Prompter is built."""

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


def sanitize_api_base(url: str | None) -> str | None:
    """``url`` without userinfo, query string or fragment (they may carry credentials)."""
    if not url or not isinstance(url, str):
        return None
    try:
        parts = urlsplit(str(url))
        host = parts.hostname
    except ValueError:
        return None
    if not parts.scheme or not host:
        return None  # not a URL we can clean reliably: better not to store it at all
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
