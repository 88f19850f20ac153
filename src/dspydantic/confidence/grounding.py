"""Grounding: where a string value occurs in the source text, as character spans in unicode code points.

Three tiers, the first that finds the value wins:

1. **exact**: every occurrence of the value as it is (``str.find``);
2. **normalized**: the same after NFKC, case folding and collapsing whitespace runs on both sides; a base
   character and the combining marks after it are normalized together, so a precomposed ``é`` in the value
   finds an ``e`` + U+0301 in the source (and back);

   in both tiers an occurrence must not cut a word (``"x"`` is not found in ``"2x"``), unless the value
   has ``min_fuzzy_length`` characters or more and occurs nowhere as a whole word;
3. **fuzzy**: the best approximate alignment of the normalized value inside the normalized source
   (``rapidfuzz.fuzz.partial_ratio_alignment``), accepted at a ratio >= ``fuzzy_threshold`` (default 85)
   for values of at least ``min_fuzzy_length`` (4) characters; shorter values must match exactly or
   normalized (a fuzzy "NY" matches half the alphabet).

Spans are ``(start, end)`` with ``source[start:end]`` the matched text of the *original* source, whatever
tier found it. Python strings index code points, so the offsets are code-point offsets for any text
(accents, CJK, emoji). This module is also the "absent is an answer" check of the accuracy work: a value
the source does not contain is a likely hallucination.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

__all__ = ["Grounding", "NormalizedText", "ground", "normalize_text"]

Method = Literal["exact", "normalized", "fuzzy"]

#: at most this many spans are reported per value (a value such as "a" can occur everywhere)
MAX_SPANS = 20


@dataclass(frozen=True, slots=True)
class Grounding:
    """Where one value occurs in the source. ``method`` is None (and ``spans`` empty) when it was not found;
    ``score`` is 1.0 for an exact or normalized match, the fuzzy ratio in [0, 1] otherwise."""

    spans: tuple[tuple[int, int], ...]
    method: Method | None
    score: float

    @property
    def grounded(self) -> bool:
        return self.method is not None


NOT_FOUND = Grounding(spans=(), method=None, score=0.0)


@dataclass(frozen=True, slots=True)
class NormalizedText:
    """A normalized copy of a text and, for each of its characters, the original span it came from."""

    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The original span behind the normalized span ``[start, end)`` (``end > start``)."""
        return self.starts[start], self.ends[end - 1]


def _clusters(text: str) -> list[tuple[int, int]]:
    """A base character with the combining marks that follow it, as (start, end) spans."""
    out: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        while j < n and unicodedata.combining(text[j]):
            j += 1
        out.append((i, j))
        i = j
    return out


@lru_cache(maxsize=64)
def normalize_text(text: str) -> NormalizedText:
    """NFKC + casefold per character cluster, whitespace runs collapsed to one space, ends stripped."""
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pending_space: tuple[int, int] | None = None
    for start, end in _clusters(text):
        cluster = text[start:end]
        if cluster.isspace():
            pending_space = (start, end) if pending_space is None else (pending_space[0], end)
            continue
        if pending_space is not None:
            if chars:  # no leading space
                chars.append(" ")
                starts.append(pending_space[0])
                ends.append(pending_space[1])
            pending_space = None
        norm = unicodedata.normalize("NFKC", cluster).casefold()
        for ch in norm:
            if ch.isspace():  # NFKC can turn a cluster into spaces (e.g. U+00A0); collapse them too
                if chars and chars[-1] != " ":
                    chars.append(" ")
                    starts.append(start)
                    ends.append(end)
                continue
            chars.append(ch)
            starts.append(start)
            ends.append(end)
    while chars and chars[-1] == " ":
        chars.pop()
        starts.pop()
        ends.pop()
    return NormalizedText("".join(chars), tuple(starts), tuple(ends))


def _bounded(haystack: str, start: int, end: int) -> bool:
    """The match does not cut a word: no letter or digit continues it on an edge that is one itself."""
    left = start == 0 or not haystack[start].isalnum() or not haystack[start - 1].isalnum()
    right = end == len(haystack) or not haystack[end - 1].isalnum() or not haystack[end].isalnum()
    return left and right


def _occurrences(haystack: str, needle: str, min_inword: int) -> list[tuple[int, int]]:
    """Occurrences of ``needle``; those inside a word count only when no whole-word one exists and the
    needle has at least ``min_inword`` characters (an "x" inside "2x" is no evidence)."""
    whole: list[tuple[int, int]] = []
    inner: list[tuple[int, int]] = []
    i = haystack.find(needle)
    while i != -1 and len(whole) < MAX_SPANS:
        span = (i, i + len(needle))
        (whole if _bounded(haystack, *span) else inner).append(span)
        i = haystack.find(needle, i + len(needle))
    if whole or len(needle) < min_inword:
        return whole
    return inner[:MAX_SPANS]


@lru_cache(maxsize=8)
def _chars(text: str) -> Counter[str]:
    """The characters of ``text`` as a multiset (read only; cached: every field of a document asks)."""
    return Counter(text)


def _may_reach(value: str, source: str, threshold: float) -> bool:
    """False when no window of ``source`` can reach ``threshold`` against ``value`` (so the fuzzy search, and
    importing rapidfuzz, are skipped). An Indel ratio is ``2·LCS / (len_a + len_b)`` and an LCS is at most
    ``I``, the characters the two strings share as multisets; a window of ``source`` of length ``m >= I``
    then scores at most ``2I / (n + I)`` for a value of length ``n``. (A value longer than the source is
    aligned the other way round: not bounded here.)"""
    n = len(value)
    if len(source) < n:
        return True
    have = _chars(source)
    shared = sum(min(k, have[ch]) for ch, k in Counter(value).items())
    return 200.0 * shared / (n + shared) >= threshold


def ground(
    value: str,
    source: str,
    *,
    fuzzy: bool = True,
    fuzzy_threshold: float = 85.0,
    min_fuzzy_length: int = 4,
) -> Grounding:
    """Find ``value`` in ``source`` (see the module docs). A blank value is not grounded."""
    if not value or not value.strip() or not source:
        return NOT_FOUND
    spans = _occurrences(source, value, min_fuzzy_length)
    if spans:
        return Grounding(tuple(spans), "exact", 1.0)
    nsrc = normalize_text(source)
    nval = normalize_text(value).text
    if not nval or not nsrc.text:
        return NOT_FOUND
    found = _occurrences(nsrc.text, nval, min_fuzzy_length)
    if found:
        return Grounding(tuple(nsrc.original_span(a, b) for a, b in found), "normalized", 1.0)
    if not fuzzy or len(nval) < min_fuzzy_length or not _may_reach(nval, nsrc.text, fuzzy_threshold):
        return NOT_FOUND
    from rapidfuzz import fuzz

    align = fuzz.partial_ratio_alignment(nval, nsrc.text, score_cutoff=fuzzy_threshold)
    if align is None or align.dest_end <= align.dest_start:
        return NOT_FOUND
    span = nsrc.original_span(align.dest_start, align.dest_end)
    return Grounding((span,), "fuzzy", round(align.score / 100.0, 4))
