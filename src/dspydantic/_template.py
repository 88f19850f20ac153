"""Templates: ``{name}`` placeholders in prompts and template variables as prompt text.

The one template engine, used by the renderer (system and instruction prompts with placeholders) and by
the input builder (a document given as template variables is rendered as ``key: value`` lines).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from dspydantic.errors import ConfigurationError

__all__ = ["format_value", "render_template", "render_variables", "template_placeholders"]


def format_value(value: Any) -> str:
    """A variable value as prompt text: strings as-is, other scalars and containers as JSON."""
    if isinstance(value, str):
        return value
    if hasattr(value, "model_dump") and callable(value.model_dump):
        value = value.model_dump(mode="json")
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def render_variables(variables: Mapping[str, Any]) -> str:
    """Template variables as ``key: value`` lines (non-scalar values as JSON)."""
    lines = []
    for key, value in variables.items():
        if not isinstance(key, str):
            raise ConfigurationError(f"template variable names must be strings, got {key!r}")
        lines.append(f"{key}: {format_value(value)}")
    return "\n".join(lines)


_IDENT_AT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _scan_template(template: str) -> list[tuple[str, str]]:
    """Split a template into ``("lit", text)`` and ``("var", name)`` tokens.

    Rules (in this order at every ``{`` / ``}``):

    * ``{name}`` where ``name`` is a Python identifier is a placeholder.
    * ``{{`` is an escaped literal ``{``.
    * ``}}`` closes an escaped ``{{`` as one literal ``}`` when the innermost open brace is an escaped
      one, or when no brace is open (``str.format`` compatibility). When the innermost open brace is a
      plain literal ``{`` (e.g. a JSON example ``{"a": {"b": 1}}``), the first ``}`` closes it and the
      second is examined on its own, so JSON written with single braces survives unchanged.
    * every other brace is literal text.
    """
    if not isinstance(template, str):
        raise ConfigurationError(f"a template must be a string, got {type(template).__name__}")
    tokens: list[tuple[str, str]] = []
    buf: list[str] = []
    stack: list[str] = []  # "esc" for an escaped {{, "lit" for a literal {
    i = 0
    n = len(template)
    while i < n:
        ch = template[i]
        if ch == "{":
            m = _IDENT_AT.match(template, i)
            if m is not None:
                if buf:
                    tokens.append(("lit", "".join(buf)))
                    buf = []
                tokens.append(("var", m.group(1)))
                i = m.end()
                continue
            if template.startswith("{{", i):
                stack.append("esc")
                buf.append("{")
                i += 2
                continue
            stack.append("lit")
            buf.append("{")
            i += 1
            continue
        if ch == "}":
            if template.startswith("}}", i) and (not stack or stack[-1] == "esc"):
                if stack:
                    stack.pop()
                buf.append("}")
                i += 2
                continue
            if stack:
                stack.pop()
            buf.append("}")
            i += 1
            continue
        buf.append(ch)
        i += 1
    if buf:
        tokens.append(("lit", "".join(buf)))
    return tokens


def template_placeholders(template: str) -> set[str]:
    """The placeholder names (``{name}``, ``name`` a Python identifier) used in ``template``."""
    return {value for kind, value in _scan_template(template) if kind == "var"}


def render_template(template: str, variables: Mapping[str, Any]) -> str:
    """Fill ``{name}`` placeholders from ``variables``; other braces are kept (see :func:`_scan_template`).

    Values are formatted with :func:`format_value`. A placeholder without a variable raises
    :class:`ConfigurationError` naming it and the available keys.
    """
    tokens = _scan_template(template)
    missing = sorted({v for k, v in tokens if k == "var" and v not in variables})
    if missing:
        available = ", ".join(sorted(str(k) for k in variables)) or "(none)"
        names = ", ".join(f"{{{m}}}" for m in missing)
        hint = (
            " The input is not template variables: a str, or a dict made only of input keywords such as "
            "{'text': ...}, is the document; give template variables as text={...}."
            if not variables else ""
        )
        raise ConfigurationError(
            f"template placeholder(s) {names} have no value; available variables: {available}. "
            "Write {{name}} for a literal '{name}'." + hint
        )
    return "".join(value if kind == "lit" else format_value(variables[value]) for kind, value in tokens)
