"""Choice fields (enums, consts, booleans) and the per-value logit biases ``optimize()`` may fit for them.

A small model has a prior over a choice that the labels don't share: Qwen2.5-0.5B never answered
``urgency: "low"`` on the Facility emails (52 of 132 training emails are low), although "low" was often its
second choice. A bias added to the logit of each value's first token where the model decides that field
moves the choices towards the labels (fitted by :mod:`dspydantic.optimize.calibrate`). The biases travel in
the request's JSON schema under :data:`BIAS_KEY` on the field's node, so an answer's cache key changes with
them; a backend that decodes with logits (the local one) applies them, and every other backend gets the
schema without them (:func:`strip_choice_bias`).

:func:`open_value` reads a JSON prefix, as a constrained decoder writes it, and says which field's value is
being written and how much of it; :func:`choice_fields` lists the choices of a schema.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from ._schema import walk_fields

__all__ = ["BIAS_KEY", "MAX_BIAS", "apply_choice_bias", "choice_biases", "choice_fields", "open_value",
           "strip_choice_bias", "value_key"]

#: the schema key holding a field's biases (JSON value -> bias); never sent to a backend that cannot use it
BIAS_KEY = "x-dspydantic-choice-bias"
#: the largest bias a saved prompter may carry (e^10: a strong preference, never a certainty)
MAX_BIAS = 10.0


def value_key(value: Any) -> str:
    """How a choice value is named in biases and recorded log-probabilities: its JSON (``'"low"'``, ``true``)."""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _values(node: dict[str, Any]) -> list[Any] | None:
    """The values a choice node allows (None: not a choice)."""
    if "enum" in node and isinstance(node["enum"], list):
        return list(node["enum"])
    if "const" in node:
        return [node["const"]]
    if node.get("type") == "boolean":
        return [True, False]
    if node.get("type") == "null":
        return [None]
    branches = node.get("anyOf")
    if isinstance(branches, list) and branches:
        out: list[Any] = []
        for branch in branches:
            vals = _values(branch) if isinstance(branch, dict) else None
            if vals is None:
                return None
            out.extend(v for v in vals if v not in out)
        return out if any(v is not None for v in out) else None
    return None


def choice_fields(schema: dict[str, Any]) -> dict[str, list[Any]]:
    """Field path -> the values it may take, for every choice field of an (inlined) schema (null included
    where it is allowed)."""
    out: dict[str, list[Any]] = {}
    for path, node, _ in walk_fields(schema):
        vals = _values(node)
        if vals is not None and len(vals) >= 2:
            out[path] = vals
    return out


def apply_choice_bias(schema: dict[str, Any], bias: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """A copy of an inlined schema with each biased choice field's biases under :data:`BIAS_KEY` (paths that
    are not choice fields are ignored)."""
    if not bias:
        return schema
    out = copy.deepcopy(schema)
    choices = choice_fields(out)
    for path, node, _ in walk_fields(out):
        if path in bias and path in choices and bias[path]:
            node[BIAS_KEY] = {str(k): float(v) for k, v in bias[path].items()}
    return out


def strip_choice_bias(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without any :data:`BIAS_KEY` (the same object when it has none)."""
    if BIAS_KEY not in json.dumps(schema):
        return schema

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != BIAS_KEY}
        if isinstance(node, list):
            return [strip(x) for x in node]
        return node

    stripped: dict[str, Any] = strip(schema)
    return stripped


def choice_biases(schema: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Field path -> JSON value -> bias, as :func:`apply_choice_bias` put them in ``schema``."""
    return {path: dict(node[BIAS_KEY]) for path, node, _ in walk_fields(schema) if isinstance(node.get(BIAS_KEY), dict)}


_LITERAL = frozenset("-+.0123456789eEtruefalsn")


def open_value(text: str) -> tuple[tuple[str | int, ...], str] | None:
    """Where a JSON prefix stands if it is writing a scalar value: ``(instance path, what of the value is
    written so far)`` (``""`` right after ``:``, ``'"lo'`` inside a string), else None (between keys, in a
    key, after a complete value, or not JSON)."""
    frames: list[list[Any]] = [["root", None, "value"]]  # [kind, key or index, expecting]
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        frame = frames[-1]
        expect = frame[2]
        if c in " \t\r\n":
            i += 1
            continue
        if expect == "value":
            if c == "{":
                frames.append(["obj", None, "key"])
                i += 1
            elif c == "[":
                frames.append(["arr", 0, "value"])
                i += 1
            elif c == '"':
                end = _string_end(text, i)
                if end < 0:
                    return _segments(frames), text[i:]
                frame[2] = "after"
                i = end
            elif c in _LITERAL:
                j = i
                while j < n and text[j] in _LITERAL:
                    j += 1
                if j == n:
                    return _segments(frames), text[i:]
                frame[2] = "after"
                i = j
            else:
                return None
        elif expect == "key":
            if c == '"':
                end = _string_end(text, i)
                if end < 0:
                    return None
                try:
                    frame[1] = json.loads(text[i:end])
                except ValueError:
                    return None
                frame[2] = "colon"
                i = end
            elif c == "}":
                frames.pop()
                if not frames:
                    return None
                frames[-1][2] = "after"
                i += 1
            else:
                return None
        elif expect == "colon":
            if c != ":":
                return None
            frame[2] = "value"
            i += 1
        elif expect == "after":
            if c == "," and frame[0] in ("obj", "arr"):
                if frame[0] == "obj":
                    frame[2] = "key"
                else:
                    frame[1] += 1
                    frame[2] = "value"
                i += 1
            elif (c == "}" and frame[0] == "obj") or (c == "]" and frame[0] == "arr"):
                frames.pop()
                frames[-1][2] = "after"
                i += 1
            else:
                return None
        else:
            return None
    frame = frames[-1]
    return (_segments(frames), "") if frame[2] == "value" and frame[0] != "root" else None


def _string_end(text: str, i: int) -> int:
    """Index after the string opening at ``text[i]`` (-1: not closed yet)."""
    j = i + 1
    n = len(text)
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    return -1


def _segments(frames: list[list[Any]]) -> tuple[str | int, ...]:
    return tuple(f[1] for f in frames[1:])
