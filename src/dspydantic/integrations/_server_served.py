"""One served prompter (preparing inputs, extracting, the answer's JSON) and the recent answers the review
page shows."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from .._media import decode_base64
from .._prompter import Prompter
from .._result import ExtractionResult
from ._identity import PreparedInput, document_key, prepare_input, prompter_fingerprint
from ._server_bodies import ExtractInput
from ._version import prompter_version


class _Answer:
    """One extraction the service made: the result, its document id and the source text it was read from."""

    __slots__ = ("document_id", "member", "prep", "result")

    def __init__(self, result: ExtractionResult[Any], prep: PreparedInput | None, member: Any, document_id: str):
        self.result = result
        self.prep = prep
        self.member = member
        self.document_id = document_id

    @property
    def source(self) -> str:
        return self.prep.doc.text if self.prep is not None else ""


class _Served:
    """One served prompter and how to call it."""

    def __init__(self, name: str, target: Any) -> None:
        self.name = name
        self.target = target
        self.version = prompter_version(target)
        self.routed = hasattr(target, "assign")  # an A/B router takes a key
        self._fingerprints: dict[int, str] = {}

    def fingerprint(self, member: Any) -> str:
        """The store's fingerprint of a served Prompter (a prompter-like member: a hash of its version)."""
        key = id(member)
        if key not in self._fingerprints:
            if isinstance(member, Prompter):
                self._fingerprints[key] = prompter_fingerprint(member)
            else:
                import hashlib

                self._fingerprints[key] = hashlib.sha256(prompter_version(member).encode()).hexdigest()
        return self._fingerprints[key]

    def member(self, result: ExtractionResult[Any] | None, exc: BaseException | None = None) -> Any:
        """The prompter that answered (or failed): a router's variant, a fallback chain's answering member."""
        target = self.target
        variant = (result.extra.get("variant") if result is not None else getattr(exc, "variant", None))
        if variant is not None and hasattr(target, "variants"):
            return target.variants.get(variant, target)
        answered = result.extra.get("answered_by") if result is not None else None
        if hasattr(target, "prompters") and hasattr(target, "names"):
            if answered in target.names:
                return target.prompters[target.names.index(answered)]
            return target.prompters[-1]  # a failed chain: its last member's error is the one raised
        return target

    def document_id(self, member: Any, prep: PreparedInput | None) -> str:
        return document_key(self.fingerprint(member), prep.digest) if prep is not None else ""

    def result_json(self, answer: _Answer) -> dict[str, Any]:
        result = answer.result
        u = result.usage
        out: dict[str, Any] = {
            "data": result.data.model_dump(mode="json", by_alias=True),
            "confidence": result.confidence,
            "field_confidences": dict(result.field_confidences),
            "spans": {k: [list(span) for span in v] for k, v in result.spans.items()},
            "ungrounded": list(result.ungrounded),
            "calibrated": result.calibrated,
            "usage": {"calls": u.calls, "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                      "cache_hits": u.cache_hits, "cost_usd": u.cost_usd},
            "attempts": result.attempts,
            "cached": result.cached,
            "prompter": self.name,
            "prompter_version": self.version,
            "document_id": answer.document_id,
        }
        answered = result.extra.get("variant") or result.extra.get("answered_by")
        if answered:
            out["answered_by"] = answered
        return out

    async def prepare(self, item: ExtractInput) -> tuple[dict[str, Any], PreparedInput]:
        """The input keywords of ``item`` and the input normalised (decoding a PDF or an image is CPU work:
        in a worker thread)."""
        kwargs: dict[str, Any] = {}
        if item.text is not None:
            kwargs["text"] = item.text
        if item.image_base64 is not None:
            kwargs["image_base64"] = item.image_base64
        if item.pdf_base64 is not None:
            kwargs["pdf_bytes"] = decode_base64(item.pdf_base64, "pdf_base64")[0]
        for option in ("pdf_mode", "pdf_dpi", "max_pdf_pages", "image_mime"):  # the library's input options
            if (value := getattr(item, option)) is not None:
                kwargs[option] = value
        binary = item.image_base64 is not None or item.pdf_base64 is not None
        prep = await asyncio.to_thread(prepare_input, kwargs) if binary else prepare_input(kwargs)
        return kwargs, prep

    async def extract(self, item: ExtractInput, kwargs: dict[str, Any], prep: PreparedInput) -> ExtractionResult[Any]:
        if isinstance(self.target, Prompter):  # the native async batch verb takes the prepared document
            (out,) = await self.target.apredict_batch([prep.doc], 1, "return", with_confidence=True)
            if isinstance(out, BaseException):
                raise out
            return out
        route_key = {"key": item.key} if self.routed and item.key is not None else {}
        if item.image_base64 is not None or item.pdf_base64 is not None:
            return await asyncio.to_thread(self.target.predict_with_confidence, **kwargs, **route_key)
        return await self.target.apredict_with_confidence(**kwargs, **route_key)


class _Recent:
    """The last answers (with their source text) for ``/review/{id}``, bounded in count and in characters."""

    def __init__(self, max_items: int, max_chars: int = 64_000_000) -> None:
        self.max_items = max_items
        self.max_chars = max_chars
        self._items: OrderedDict[str, tuple[str, _Answer]] = OrderedDict()
        self._chars = 0

    def add(self, name: str, answer: _Answer) -> None:
        if self.max_items < 1 or not answer.document_id:
            return
        old = self._items.pop(answer.document_id, None)
        if old is not None:
            self._chars -= len(old[1].source)
        self._items[answer.document_id] = (name, answer)
        self._chars += len(answer.source)
        while self._items and (len(self._items) > self.max_items or self._chars > self.max_chars):
            _, (_, dropped) = self._items.popitem(last=False)
            self._chars -= len(dropped.source)

    def get(self, document_id: str) -> tuple[str, _Answer] | None:
        return self._items.get(document_id)


def _stored_source(record: Mapping[str, Any]) -> str:
    """The text a stored input was read from (a template's rendered variables); '' for a PDF or an image
    given as bytes (the store does not keep their text)."""
    text = record.get("text")
    if isinstance(text, str):
        return text
    if isinstance(text, Mapping):
        from .._inputs import render_variables

        return render_variables(text)
    return ""


