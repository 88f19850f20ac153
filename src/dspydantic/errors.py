"""Typed errors. Messages never contain API keys."""

from __future__ import annotations

import functools
import re
from typing import Any


class DspydanticError(Exception):
    """Base class of every error this library raises."""


class ConfigurationError(DspydanticError, ValueError):
    """Bad arguments or environment, detected before any network call."""


class LabelError(ConfigurationError):
    """An example's ``expected_output`` does not fit the model (unknown field, value of the wrong type); raised
    before any LM call. ``index`` is the example's position in the list given, ``field`` the dotted path of
    the field (``None`` for the label as a whole) and ``reason`` what is wrong."""

    def __init__(self, message: str, *, index: int, field: str | None, reason: str) -> None:
        super().__init__(message)
        self.index = index
        self.field = field
        self.reason = reason


class MissingExtraError(DspydanticError, ImportError):
    """An optional dependency is not installed; the message names the extra."""

    def __init__(self, extra: str, package: str) -> None:
        super().__init__(
            f"{package} is required for this feature: pip install 'dspydantic[{extra}]'"
        )
        self.extra = extra
        self.package = package


class LMError(DspydanticError):
    """The LM call itself failed (transport, HTTP status, timeout).

    ``status`` is the HTTP status (``None`` for a transport fault), ``retryable`` says whether the retry
    policy may try again, ``headers`` are the response's headers (lower-cased names; never the request's),
    ``request_id`` comes from ``x-request-id`` / ``request-id`` and ``retry_after`` (seconds) from
    ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``. The message is redacted (see
    :func:`redact`) and capped.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        headers: dict[str, str] | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        secrets: tuple[str | None, ...] = (),
    ) -> None:
        super().__init__(redact(message, *secrets))
        self.status = status
        self.retryable = retryable
        self.headers: dict[str, str] = dict(headers or {})
        self.request_id = request_id
        self.retry_after = retry_after
        #: how many attempts were made (set by the retry layer)
        self.attempts = 1


class ExtractionError(DspydanticError, ValueError):
    """The LM answered, but no answer validated against the model after all re-asks.

    ``raw_output`` is the last answer, ``errors`` the validation errors of every attempt, ``usage`` the LM
    usage of the whole extraction. ``truncated`` is True when the answer was cut by the token limit
    (``finish_reason == "length"``) even after one retry with a larger ``max_tokens``.

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
        truncated: bool = False,
    ) -> None:
        super().__init__(redact(message))  # it may quote the LM's answer
        self.raw_output = raw_output
        self.errors = errors or []
        self.attempts = attempts
        self.usage = usage
        self.truncated = truncated


class PersistenceError(DspydanticError):
    """A prompter directory could not be saved or loaded."""


class CacheWarning(UserWarning):
    """The response cache failed (corrupt file, unwritable directory): extraction continues without it."""


class SchemaDriftWarning(UserWarning):
    """The model given to ``Prompter.load`` differs from the saved one in a compatible way."""


#: longest error message we show (a 5 MB error body must not become a 5 MB exception)
MESSAGE_LIMIT = 2000

@functools.cache
def _secret_patterns() -> tuple[tuple[re.Pattern[str], str], ...]:
    """Compiled on first use (not at ``import dspydantic``)."""
    return (
        # header echoes: "Authorization: Bearer ...", "x-api-key": "..."
        (
            re.compile(r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|cookie)([\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?[^\s\"',}]+"),
            r"\1\2***",
        ),
        (re.compile(r"(?i)\b(bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 ***"),
        (re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_-]{8,}"), r"\1-***"),
        # credentials in URLs: scheme://user:password@host
        (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@]+@"), r"\1***@"),
        # key=... in query strings and key: ... in JSON
        (
            re.compile(r"(?i)\b(api[_-]?key|access[_-]?token|client[_-]?secret|password|secret)"
                       r"([\"']?\s*[:=]\s*[\"']?)[^\"'\s,&}]+"),
            r"\1\2***",
        ),
    )


def redact(text: str, *secrets: str | None, limit: int | None = MESSAGE_LIMIT) -> str:
    """The one redaction applied to everything that may be shown (error messages, logs, reprs).

    Removes every given secret, then anything that looks like one (``Authorization``/``x-api-key``
    values, ``Bearer``/``Basic`` credentials, ``sk-...`` keys, ``user:password@`` in URLs, ``api_key=...``),
    and only then cuts the text to ``limit`` characters (so a cut can never leave part of a secret).
    """
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    for pattern, repl in _secret_patterns():
        text = pattern.sub(repl, text)
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit} more characters)"
    return text


def decode_body(raw: bytes, *secrets: str | None, limit: int = MESSAGE_LIMIT) -> str:
    """A response body as safe text for a message: secrets removed from the bytes (UTF-8 and UTF-16
    spellings) and the text, decoded with replacement characters, redacted, then capped."""
    head = raw[: max(limit * 8, 1 << 16)]  # far beyond what is shown: the cut below still comes last
    for s in secrets:
        if s and len(s) >= 4:
            for enc in ("utf-8", "utf-16-le", "utf-16-be"):
                head = head.replace(s.encode(enc, "replace"), b"***")
    text = head.decode("utf-8", "replace").replace("\x00", "")
    return redact(text, *secrets, limit=limit)


class BatchError(DspydanticError):
    """Some items of a batch failed (``on_error="raise"``). Nothing is lost: ``results`` holds every slot
    (the data of items that succeeded, the exception of those that failed) and ``errors`` maps index -> error.
    """

    def __init__(self, message: str, *, results: list[Any], errors: dict[int, Exception]) -> None:
        super().__init__(message)
        self.results = results
        self.errors = errors


class BatchJobError(DspydanticError):
    """A provider batch job as a whole cannot do what was asked (not finished yet, not found, timed out
    waiting); ``state`` is the job's state when known."""

    def __init__(self, message: str, *, state: str | None = None) -> None:
        super().__init__(message)
        self.state = state


class BatchJobItemError(LMError):
    """One item of a provider batch job got no answer: ``reason`` is ``"provider"`` (the provider failed
    that request; ``status`` is its HTTP status), ``"expired"`` (the 24 h window closed before it ran),
    ``"cancelled"``, ``"failed"`` (the provider rejected the whole job) or ``"missing"`` (no answer and no
    error was returned for it, or a cached answer is gone) or ``"too_long"`` (the document needs chunking, so
    it was not submitted). ``custom_id`` names the request in the job."""

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        custom_id: str | None = None,
        status: int | None = None,
        retryable: bool = False,
    ) -> None:
        super().__init__(message, status=status, retryable=retryable)
        self.reason = reason
        self.custom_id = custom_id
