"""A short content hash of what answers for a prompter (shared by the service and the file pipeline)."""

from __future__ import annotations

import hashlib
from typing import Any

from .._prompter import Prompter


def members(obj: Any) -> list[Any]:
    """The prompters of a fallback chain or an A/B router (empty for a plain Prompter)."""
    if hasattr(obj, "prompters"):
        return list(obj.prompters)
    if hasattr(obj, "variants"):
        return list(obj.variants.values())
    return []


def prompter_version(prompter: Any) -> str:
    """12 hex digits of SHA-256 over the model id, the schema and the prompt state (prompts, field
    descriptions, demos) -- the saved files that decide the answers, not the save time or the report; over
    every member for a fallback chain or an A/B router."""
    h = hashlib.sha256()
    inner = members(prompter)
    if inner:
        for m in inner:
            h.update(prompter_version(m).encode())
    elif isinstance(prompter, Prompter):
        from .._persist import MANIFEST, REPORT_FILE
        from .._persist import render_files as _render_files

        h.update(str(prompter.model_id).encode())
        for name, data in sorted(_render_files(prompter).items()):
            if name not in (MANIFEST, REPORT_FILE):
                h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    else:
        h.update(repr(prompter).encode())
    return h.hexdigest()[:12]
