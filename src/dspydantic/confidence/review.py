"""The HTML review page of one extraction: the source with each field's grounded spans highlighted, and a
table of the fields with their values and confidences.

Everything from the document and the answer is untrusted: every piece of text is HTML-escaped, the page
has no script, and its Content-Security-Policy forbids loading anything. ``render_review_html`` returns a
complete standalone page (the service's ``/review/{id}`` and ``dspydantic extract --html`` serve it).
"""

from __future__ import annotations

import html
import itertools
import json
from typing import Any

from .._schema import model_schema, owning_path, schema_path, walk_fields
from ._jsonpos import locate_values

__all__ = ["render_review_html"]

_CSS = """
body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:60rem;color:#222;padding:0 1rem}
h1{font-size:1.3rem}h2{font-size:1.1rem;margin-top:2rem}
.source{white-space:pre-wrap;border:1px solid #ccc;border-radius:6px;padding:1rem;background:#fafafa}
mark{border-radius:3px;padding:0 1px}
mark.high{background:#c8f0c8}mark.mid{background:#ffe7a6}mark.low{background:#ffc4c4}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;
vertical-align:top}td.value{font-family:ui-monospace,monospace;white-space:pre-wrap;word-break:break-word}
.badge{font-size:.8rem;border-radius:3px;padding:0 .3rem}.badge.ungrounded{background:#ffc4c4}
.badge.grounded{background:#c8f0c8}.meta{color:#666;font-size:.9rem}
"""


def _level(conf: float | None) -> str:
    if conf is None:
        return "mid"
    return "high" if conf >= 0.8 else "mid" if conf >= 0.5 else "low"


def _values(data: Any) -> dict[str, list[Any]]:
    """Field path -> the values of the answer at that path (list items pooled)."""
    if not hasattr(data, "model_dump"):
        return {}
    known = {p for p, _, _ in walk_fields(model_schema(type(data)))}
    dumped = data.model_dump(mode="json", by_alias=True)
    out: dict[str, list[Any]] = {}
    for loc in locate_values(json.dumps(dumped, ensure_ascii=False)) or []:
        if loc.segments:
            path = schema_path(loc.segments, known)
            if path in known:
                out.setdefault(path, []).append(loc.value)
            elif (own := owning_path(path, known)) is not None and own not in out:
                out.setdefault(own, [])
    return out


def _highlighted(source: str, spans: dict[str, list[tuple[int, int]]], conf: dict[str, float]) -> str:
    """The source as HTML with a ``<mark>`` around every stretch covered by one or more fields' spans."""
    cover: list[tuple[int, int, str]] = []
    for path, ss in spans.items():
        for start, end in ss:
            start, end = max(0, int(start)), min(len(source), int(end))
            if end > start:
                cover.append((start, end, path))
    cuts = sorted({0, len(source), *(s for s, _, _ in cover), *(e for _, e, _ in cover)})
    parts: list[str] = []
    for a, b in itertools.pairwise(cuts):
        text = html.escape(source[a:b], quote=True)
        fields = sorted({p for s, e, p in cover if s <= a and b <= e})
        if not fields:
            parts.append(text)
            continue
        lowest = min((conf[p] for p in fields if p in conf), default=None)
        label = ", ".join(f"{p} {conf[p]:.2f}" if p in conf else p for p in fields)
        parts.append(
            f'<mark class="{_level(lowest)}" data-fields="{html.escape(" ".join(fields), quote=True)}" '
            f'data-start="{a}" data-end="{b}" title="{html.escape(label, quote=True)}">{text}</mark>'
        )
    return "".join(parts)


def render_review_html(result: Any, source_text: str, *, title: str = "Extraction review") -> str:
    """A standalone HTML page reviewing ``result`` (an :class:`~dspydantic.ExtractionResult`) against the
    ``source_text`` it was extracted from: highlighted spans with their field and confidence, and a field
    table (value, confidence, grounded or not). All text is escaped."""
    source = str(source_text or "")
    conf: dict[str, float] = {str(k): float(v) for k, v in (getattr(result, "field_confidences", None) or {}).items()}
    spans: dict[str, list[tuple[int, int]]] = dict(getattr(result, "spans", None) or {})
    ungrounded = set(getattr(result, "ungrounded", None) or [])
    values = _values(getattr(result, "data", None))
    paths = list(dict.fromkeys([*values, *conf, *spans]))
    rows = []
    for i, path in enumerate(paths):
        vals = values.get(path, [])
        shown = json.dumps(vals[0] if len(vals) == 1 else vals, ensure_ascii=False, indent=None)
        c = conf.get(path)
        if path in ungrounded:
            badge = '<span class="badge ungrounded">not found in source</span>'
        elif spans.get(path):
            badge = f'<span class="badge grounded">{len(spans[path])} span(s)</span>'
        else:
            badge = ""
        rows.append(
            f'<tr id="field-{i}" data-field="{html.escape(path, quote=True)}" '
            f'data-confidence="{"" if c is None else f"{c:.4f}"}">'
            f"<td>{html.escape(path)}</td><td class=\"value\">{html.escape(shown)}</td>"
            f'<td class="conf {_level(c)}">{"–" if c is None else f"{c:.2f}"}</td><td>{badge}</td></tr>'
        )
    overall = getattr(result, "confidence", None)
    calibrated = "calibrated" if getattr(result, "calibrated", False) else "uncalibrated"
    meta = (
        f"overall confidence {float(overall):.2f} ({calibrated}; the lowest field confidence)"
        if isinstance(overall, (int, float))
        else ""
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=\"meta\" id=\"overall\">{html.escape(meta)}</p>"
        f"<h2>Source</h2><div class=\"source\" id=\"source\">{_highlighted(source, spans, conf)}</div>"
        "<h2>Fields</h2><table id=\"fields\"><thead><tr><th>field</th><th>value</th><th>confidence</th>"
        f"<th>grounding</th></tr></thead><tbody>{''.join(rows)}</tbody></table></body></html>\n"
    )
