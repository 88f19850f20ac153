"""Where each value of an LM's JSON answer sits in the raw answer text (character offsets).

The answer is located as the renderer's parser finds it (:func:`dspydantic._render.extract_json`): the
whole text when it is JSON, else the first object in a code fence, else the first object in the text.
Every value (objects, arrays and scalars, nested) is reported with its instance path (keys and list
indices; :func:`dspydantic._schema.schema_path` turns it into a field path) and its ``[start, end)`` range
in the raw text.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Located", "locate_values"]

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_WS = " \t\n\r"
_decoder = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Located:
    """One value of the answer: ``segments`` (keys and indices from the root), its value, and its range."""

    segments: tuple[str | int, ...]
    value: Any
    start: int
    end: int


class _Bad(ValueError):
    pass


def _ws(s: str, i: int) -> int:
    n = len(s)
    while i < n and s[i] in _WS:
        i += 1
    return i


def _scan(s: str, i: int, segs: tuple[str | int, ...], out: list[Located], depth: int) -> tuple[Any, int]:
    if depth > 200:
        raise _Bad("too deep")
    i = _ws(s, i)
    if i >= len(s):
        raise _Bad("unexpected end")
    start = i
    c = s[i]
    if c == "{":
        obj: dict[str, Any] = {}
        i = _ws(s, i + 1)
        if i < len(s) and s[i] == "}":
            out.append(Located(segs, obj, start, i + 1))
            return obj, i + 1
        while True:
            i = _ws(s, i)
            if i >= len(s) or s[i] != '"':
                raise _Bad("expected a key")
            key, i = json.decoder.scanstring(s, i + 1)  # type: ignore[attr-defined]
            i = _ws(s, i)
            if i >= len(s) or s[i] != ":":
                raise _Bad("expected ':'")
            obj[key], i = _scan(s, i + 1, (*segs, key), out, depth + 1)
            i = _ws(s, i)
            if i < len(s) and s[i] == ",":
                i += 1
                continue
            if i < len(s) and s[i] == "}":
                out.append(Located(segs, obj, start, i + 1))
                return obj, i + 1
            raise _Bad("expected ',' or '}'")
    if c == "[":
        arr: list[Any] = []
        i = _ws(s, i + 1)
        if i < len(s) and s[i] == "]":
            out.append(Located(segs, arr, start, i + 1))
            return arr, i + 1
        while True:
            value, i = _scan(s, i, (*segs, len(arr)), out, depth + 1)
            arr.append(value)
            i = _ws(s, i)
            if i < len(s) and s[i] == ",":
                i += 1
                continue
            if i < len(s) and s[i] == "]":
                out.append(Located(segs, arr, start, i + 1))
                return arr, i + 1
            raise _Bad("expected ',' or ']'")
    try:
        value, end = _decoder.raw_decode(s, i)
    except json.JSONDecodeError as exc:
        raise _Bad(str(exc)) from None
    out.append(Located(segs, value, start, end))
    return value, end


def _try(s: str, i: int) -> list[Located] | None:
    out: list[Located] = []
    try:
        value, _ = _scan(s, i, (), out, 0)
    except (_Bad, RecursionError, ValueError, IndexError):
        return None
    return out if isinstance(value, dict) else None


def locate_values(raw: str) -> list[Located] | None:
    """Every value of the JSON object in ``raw`` with its range in ``raw``, or None when none is found."""
    whole = _try(raw, _ws(raw, 0))
    if whole is not None:
        return whole
    for m in _FENCE.finditer(raw):
        found = _first_object(raw, m.start(1), m.end(1))
        if found is not None:
            return found
    return _first_object(raw, 0, len(raw))


def _first_object(raw: str, lo: int, hi: int) -> list[Located] | None:
    i = raw.find("{", lo, hi)
    while i != -1:
        found = _try(raw[:hi], i)
        if found is not None:
            return found
        i = raw.find("{", i + 1, hi)
    return None
