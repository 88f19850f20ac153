"""Stable identities for the scale-out integrations: a prompter's fingerprint, an input's digest, and the key
of one (input, prompter) pair, all the same in every process (no salted ``hash()``).

* :func:`prompter_fingerprint` — :attr:`Prompter.fingerprint`, the one identity of a prompter (a sha256 over
  what decides an answer; a prompter and its ``Prompter.load`` copy agree; see :mod:`dspydantic._fingerprint`).
* :func:`prepare_input` — the input normalised as the Prompter will send it (:class:`InputDoc`, whose
  fingerprint is a sha256 over the content parts: a PDF given by path or by bytes, an image by path or by
  base64, give the same digest), plus a JSON-safe record of it to store and to rebuild an ``Example`` from.
* :func:`document_key` — sha256 of the prompter fingerprint and the input digest: a document's id.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._example import INPUT_KEYS, Example
from .._fingerprint import prompter_lm
from .._inputs import InputDoc, build_input
from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .._prompter import Prompter

__all__ = [
    "PreparedInput", "document_key", "example_from_record", "prepare_input", "prompter_fingerprint", "prompter_lm",
]


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def prompter_fingerprint(prompter: Prompter) -> str:
    """The prompter's one fingerprint (:attr:`Prompter.fingerprint`, see :mod:`dspydantic._fingerprint`)."""
    return prompter.fingerprint


def document_key(fingerprint: str, input_digest: str) -> str:
    """The id of one document: sha256 over the prompter fingerprint and the input digest."""
    return hashlib.sha256(f"dspydantic.document\n{fingerprint}\n{input_digest}".encode()).hexdigest()


@dataclass(frozen=True)
class PreparedInput:
    """One input, normalised: ``doc`` is what the Prompter sends, ``record`` what is stored about it."""

    doc: InputDoc
    record: dict[str, Any]

    @property
    def digest(self) -> str:
        return self.doc.fingerprint


def input_kwargs(item: Any) -> dict[str, Any]:
    """The Prompter input keywords of ``item``: a str, a dict of template variables, a dict of input
    keywords (``{"pdf_path": ...}``) or an :class:`Example`."""
    if isinstance(item, Example):
        return item.input_kwargs()
    if isinstance(item, str):
        return {"text": item}
    if isinstance(item, Mapping):
        if item and set(item) <= INPUT_KEYS:
            return dict(item)
        return {"text": dict(item)}
    raise ConfigurationError(
        f"an input must be a str, a dict of template variables, a dict of input keywords or an Example, "
        f"got {type(item).__name__}"
    )


def prepare_input(item: Any) -> PreparedInput:
    """Normalise ``item`` (see :func:`input_kwargs`) into what the Prompter sends and what is stored."""
    if isinstance(item, PreparedInput):
        return item
    kwargs = input_kwargs(item)
    doc = build_input(**kwargs)
    return PreparedInput(doc=doc, record=_record(kwargs, doc))


def _record(kwargs: Mapping[str, Any], doc: InputDoc) -> dict[str, Any]:
    """A JSON-safe description of the input, replayable as an ``Example`` where the input allows it."""
    rec: dict[str, Any] = {"kind": doc.kind}
    text = kwargs.get("text")
    if text is not None:
        rec["text"] = text if isinstance(text, str) else json.loads(_canonical(dict(text)))
    for key in ("image_path", "pdf_path"):
        if kwargs.get(key) is not None:
            rec[key] = os.path.abspath(os.fspath(kwargs[key]))
    b64 = kwargs.get("image_base64")
    if b64 is not None:
        rec["image_base64"] = b64.decode("ascii") if isinstance(b64, bytes) else str(b64)
    raw = kwargs.get("image_bytes")
    if raw is not None:
        rec["image_base64"] = base64.b64encode(bytes(raw)).decode("ascii")
    if kwargs.get("pdf_bytes") is not None:
        rec["pdf_bytes"] = True  # not kept: such a document cannot become an Example
    if kwargs.get("image") is not None:
        rec["image"] = True  # a PIL image: not kept either
    if kwargs.get("pdf_mode") is not None:
        rec["pdf_mode"] = kwargs["pdf_mode"]
    return rec


def example_from_record(record: Mapping[str, Any], expected: Any) -> Example | None:
    """An ``Example`` of a stored input labelled ``expected`` (None when the input was not kept)."""
    if record.get("pdf_bytes") or record.get("image"):
        return None
    kw = {k: record[k] for k in ("text", "image_path", "image_base64", "pdf_path") if record.get(k) is not None}
    if not kw:
        return None
    return Example(expected_output=expected, **kw)
