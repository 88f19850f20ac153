"""The short version of what answers for a prompter (shared by the service and the file pipeline): the first
12 hex digits of its one fingerprint (:attr:`Prompter.fingerprint`), over every member for a fallback chain or
an A/B router."""

from __future__ import annotations

from typing import Any

from .._fingerprint import fingerprint_of, members

__all__ = ["members", "prompter_version"]


def prompter_version(prompter: Any) -> str:
    """12 hex digits of :func:`dspydantic._fingerprint.fingerprint_of` (a Prompter's :attr:`~Prompter.version`)."""
    return fingerprint_of(prompter)[:12]
