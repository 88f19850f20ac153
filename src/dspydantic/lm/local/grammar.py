"""JSON schema -> llama.cpp grammar for the local model, and greedy decoding that checks it lazily.

Every unbounded string of the schema gets a ``maxLength`` first (:func:`bound_string_lengths`), so a
constrained answer cannot run away; the grammars are compiled once per schema (:class:`GrammarCache`).
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from typing import Any

from dspydantic.errors import ConfigurationError
from dspydantic.lm.local import _llama

__all__ = ["GrammarCache", "LazyGrammar", "bound_string_lengths", "every_key_written"]

#: string ``format``s llama.cpp's grammar converter turns into a fixed-shape rule
_BOUNDED_FORMATS = frozenset(
    {"date", "time", "date-time", "uuid", "uuid1", "uuid2", "uuid3", "uuid4", "uuid5"}
)


def bound_string_lengths(schema: dict[str, Any], max_length: int | None) -> dict[str, Any]:
    """A copy of ``schema`` where every free string (no maxLength/enum/const/pattern/bounded format) gets
    ``maxLength = max_length``.

    llama.cpp's JSON-schema-to-grammar converter honours ``maxLength`` only on nodes whose ``type`` is
    exactly ``"string"``; a ``type`` list containing ``"string"`` is rewritten into an equivalent
    ``anyOf`` so the bound applies there too.
    """
    out = copy.deepcopy(schema)
    if max_length is None:
        return out
    bounded: dict[str, Any] = _bound(out, max_length)
    return bounded


def _bound(node: Any, max_length: int) -> Any:
    if isinstance(node, list):
        return [_bound(item, max_length) for item in node]
    if not isinstance(node, dict):
        return node
    for key, value in list(node.items()):
        if key in ("enum", "const", "default", "examples"):
            continue  # literal values, not schemas
        if key in ("properties", "$defs", "definitions", "patternProperties"):
            if isinstance(value, dict):
                node[key] = {name: _bound(sub, max_length) for name, sub in value.items()}
        elif isinstance(value, (dict, list)):
            node[key] = _bound(value, max_length)
    typ = node.get("type")
    if isinstance(typ, list) and "string" in typ:
        rest = {k: v for k, v in node.items() if k != "type"}
        branches = [
            _bound_leaf({**rest, "type": t}, max_length) if t == "string" else {**rest, "type": t}
            for t in typ
        ]
        return {"anyOf": branches}
    return _bound_leaf(node, max_length)


def _bound_leaf(node: dict[str, Any], max_length: int) -> dict[str, Any]:
    if (
        node.get("type") == "string"
        and "maxLength" not in node
        and not {"enum", "const", "pattern"} & node.keys()
        and node.get("format") not in _BOUNDED_FORMATS
    ):
        node["maxLength"] = max(int(max_length), int(node.get("minLength", 0)))
    return node


def every_key_written(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` where every property that may be null is also required, so the grammar makes the
    model write each such key (and then a value or ``null``) in the model's field order.

    llama.cpp's converter lets an optional property be left out and puts the optional ones after the
    required ones. A small model takes that shortcut: Qwen2.5-0.5B wrote ``{"vendor", "currency", "total",
    "customer"}`` for invoices that state their number and dates, skipping the optional keys in between
    instead of answering them. A key that must be written is a question the model must answer; ``null``
    stays a valid answer, so nothing the model's schema allows is forbidden. Properties that cannot be null
    (a default of another kind) stay optional: requiring them would make the model invent a value.
    """

    from dspydantic._schema import map_schema  # the one schema walker (imported when used, as backend does)

    def nullable(node: Any) -> bool:
        if not isinstance(node, dict):
            return False
        if "default" in node and node["default"] is None:
            return True
        typ = node.get("type")
        if typ == "null" or (isinstance(typ, list) and "null" in typ):
            return True
        return any(nullable(branch) for key in ("anyOf", "oneOf") for branch in node.get(key) or ())

    def require_nullable(out: dict[str, Any]) -> dict[str, Any]:
        props = out.get("properties")
        if isinstance(props, dict) and props:
            required = list(out.get("required") or [])
            extra = [name for name, sub in props.items() if name not in required and nullable(sub)]
            if extra:
                out["required"] = [name for name in props if name in required or name in extra]
        return out

    return map_schema(schema, require_nullable)


def _strict_json_chars(gbnf: str) -> str:
    """llama-cpp-python's converter lets raw control characters into strings (invalid JSON); forbid them
    as llama.cpp's own converter does."""
    lines = gbnf.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("char ::= "):
            lines[i] = line.replace(r'[^"\\]', r'[^"\\\x7F\x00-\x1F]', 1)
    return "\n".join(lines)


class GrammarCache:
    """The compiled grammars of one loaded model, by schema (the ``size`` most recently used)."""

    def __init__(self, llama: Any, size: int = 64) -> None:
        self._llama = llama
        self._size = size
        self._grammars: OrderedDict[str, Any] = OrderedDict()

    def get(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        cached = self._grammars.get(key)
        if cached is not None:
            self._grammars.move_to_end(key)
            return cached
        try:
            gbnf = _llama.gbnf_from_json_schema(json.dumps(schema))
        except Exception as exc:
            raise ConfigurationError(
                f"the local backend cannot turn this JSON schema into a grammar: {exc}"
            ) from exc
        grammar = _llama.compile_grammar(self._llama, _strict_json_chars(gbnf))
        self._grammars[key] = grammar
        if len(self._grammars) > self._size:
            self._grammars.popitem(last=False)
        return grammar


class LazyGrammar:
    """Greedy decoding under a grammar, checking the grammar lazily (a logits processor).

    llama-cpp-python puts the grammar sampler in the chain, where it tests every one of the ~150k vocabulary
    tokens at every step (~20 ms of CPU per token here, a third of a generated token's cost). Under greedy
    decoding the answer only depends on whether the top token is allowed: this logits processor (it runs
    first in the chain) tests just the argmax, and masks the whole vocabulary only when that token is
    rejected, which is what llama.cpp's own ``common`` sampler does. The chosen tokens are exactly those of
    the full-grammar path. Only used with temperature 0 and no repetition penalty.
    """

    def __init__(self, llama: Any, grammar: Any) -> None:
        self._sampler = _llama.GrammarSampler(llama, _llama.grammar_text(grammar))
        self._started = False
        self.steps = 0
        self.full_masks = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import numpy as np

        if self._started:  # the token chosen at the previous step is now the last input id
            self._sampler.accept(int(input_ids[-1]))
        self._started = True
        self.steps += 1
        if self._sampler.allows(int(np.argmax(scores))):
            return scores  # the greedy choice is allowed: nothing to mask
        self.full_masks += 1
        return self._sampler.mask(scores)

    def close(self) -> None:
        self._sampler.close()
