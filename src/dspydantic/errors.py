"""Typed errors. Messages never contain API keys."""

from __future__ import annotations

from typing import Any


class DspydanticError(Exception):
    """Base class of every error this library raises."""


class ConfigurationError(DspydanticError, ValueError):
    """Bad arguments or environment, detected before any network call."""


class MissingExtraError(DspydanticError, ImportError):
    """An optional dependency is not installed; the message names the extra."""

    def __init__(self, extra: str, package: str) -> None:
        super().__init__(
            f"{package} is required for this feature: pip install 'dspydantic[{extra}]'"
        )
        self.extra = extra
        self.package = package


class LMError(DspydanticError):
    """The LM call itself failed (transport, HTTP status, timeout)."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class ExtractionError(DspydanticError, ValueError):
    """The LM answered, but no answer validated against the model after all re-asks.

    A ``ValueError`` too: dspydantic 0.1 raised ``ValueError`` (or pydantic's ``ValidationError``, a
    ``ValueError``) for an answer it could not parse or validate, so ``except ValueError`` still catches it.
    """

    def __init__(
        self,
        message: str,
        *,
        raw_output: str | None = None,
        errors: list[Any] | None = None,
        attempts: int = 0,
        usage: Any = None,
    ) -> None:
        super().__init__(message)
        self.raw_output = raw_output
        self.errors = errors or []
        self.attempts = attempts
        self.usage = usage


class PersistenceError(DspydanticError):
    """A prompter directory could not be saved or loaded."""


class SchemaDriftWarning(UserWarning):
    """The model given to ``Prompter.load`` differs from the saved one in a compatible way."""


def redact(text: str, *secrets: str | None) -> str:
    """Remove every given secret from ``text`` (used on anything that may be shown)."""
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return text


class BatchError(DspydanticError):
    """Some items of a batch failed (``on_error="raise"``). Nothing is lost: ``results`` holds every slot
    (the data of items that succeeded, the exception of those that failed) and ``errors`` maps index -> error.
    """

    def __init__(self, message: str, *, results: list[Any], errors: dict[int, Exception]) -> None:
        super().__init__(message)
        self.results = results
        self.errors = errors
