"""Long documents: split into overlapping chunks that fit the context window.

* :func:`split_text` cuts on paragraph, line, sentence or whitespace boundaries (best available near the
  token limit) and overlaps consecutive chunks.
* :func:`chunk_budget` computes how many tokens the document may take per call.

The per-chunk extractions are merged back into one by :func:`dspydantic._merge.merge_extractions`.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from dspydantic._tokens import CHARS_PER_TOKEN, estimate_tokens
from dspydantic.errors import ConfigurationError

__all__ = [
    "MIN_CHUNK_TOKENS",
    "Chunk",
    "chunk_budget",
    "estimate_tokens",
    "split_text",
]

#: the smallest document budget :func:`chunk_budget` returns
MIN_CHUNK_TOKENS = 256

# --------------------------------------------------------------------------------------------------
# splitting


@dataclass(frozen=True, slots=True)
class Chunk:
    """A slice of the document: ``text == document[start:end]``; ``index`` counts from 0."""

    text: str
    start: int
    end: int
    index: int = 0


# boundary patterns; a boundary is the position right after the match (the next chunk starts there)
_BOUNDARY_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"\s*(?:\n[ \t]*){2,}"),  # 3: paragraph break (blank line)
    re.compile(r"[ \t]*\n\s*"),  # 2: line break
    re.compile(r"[.!?\u2026\u3002\uff01\uff1f][\"'\u201d\u2019)\]]*\s+"),  # 1: sentence end
    re.compile(r"\s+"),  # 0: whitespace
)


class _Boundaries:
    """Sorted boundary positions per level (highest level first)."""

    def __init__(self, text: str) -> None:
        self.levels: list[list[int]] = [
            sorted({m.end() for m in pattern.finditer(text)}) for pattern in _BOUNDARY_PATTERNS
        ]

    def last_in(self, lo: int, hi: int) -> int | None:
        """The highest-level boundary in ``(lo, hi]``, the latest one of that level; ``None`` if none."""
        for positions in self.levels:
            k = bisect.bisect_right(positions, hi)
            if k and positions[k - 1] > lo:
                return positions[k - 1]
        return None

    def first_in(self, lo: int, hi: int, min_level_index: int) -> int | None:
        """The earliest boundary in ``[lo, hi)`` among levels ``0..min_level_index`` (0 = paragraph)."""
        best: int | None = None
        for positions in self.levels[: min_level_index + 1]:
            k = bisect.bisect_left(positions, lo)
            if k < len(positions) and positions[k] < hi and (best is None or positions[k] < best):
                best = positions[k]
        return best


def split_text(
    text: str,
    *,
    max_tokens: int,
    overlap_tokens: int = 64,
    count_tokens: Callable[[str], int] | None = None,
) -> list[Chunk]:
    """Split ``text`` into chunks of at most ``max_tokens`` tokens each, overlapping by ~``overlap_tokens``.

    Every character is covered: the first chunk starts at 0, the last ends at ``len(text)`` and each
    chunk starts at or before the previous one's end. Cuts prefer, within the second half of the
    largest window that fits, a paragraph break, then a line break, then a sentence end, then
    whitespace; a chunk is cut mid-word only when there is no boundary. Overlaps start at a sentence or
    word boundary. ``overlap_tokens`` is capped at half of ``max_tokens``. ``count_tokens`` defaults to
    :func:`estimate_tokens`; it should be (roughly) monotone in the text length. A chunk only exceeds
    ``max_tokens`` if a single character does. A text that fits is returned as one chunk (also when
    empty).
    """
    if not isinstance(text, str):
        raise ConfigurationError(f"split_text needs a string, got {type(text).__name__}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ConfigurationError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if isinstance(overlap_tokens, bool) or not isinstance(overlap_tokens, int) or overlap_tokens < 0:
        raise ConfigurationError(f"overlap_tokens must be a non-negative int, got {overlap_tokens!r}")
    overlap_tokens = min(overlap_tokens, max_tokens // 2)
    count = count_tokens or estimate_tokens
    n = len(text)
    if count(text) <= max_tokens:
        return [Chunk(text=text, start=0, end=n, index=0)]

    bounds = _Boundaries(text)
    chunks: list[Chunk] = []
    start = 0
    guess = max_tokens * 4  # characters; refined from each chunk found
    prev_end = 0
    while True:
        limit = _max_end(text, start, max_tokens, count_tokens, guess)
        if limit <= prev_end and start < prev_end:
            # the overlap leaves no room for new text (dense tokens ahead): drop it for this chunk
            start = prev_end
            limit = _max_end(text, start, max_tokens, count_tokens, guess)
        if limit >= n:
            end = n
        else:
            window = limit - start
            guess = max(1, window)
            cut = bounds.last_in(max(start + window // 2, prev_end), limit)
            end = cut if cut is not None else limit
        prev_end = end
        chunks.append(Chunk(text=text[start:end], start=start, end=end, index=len(chunks)))
        if end >= n:
            return chunks
        next_start = end
        # never re-cover more than half of this chunk, and always move forward
        floor = start + max(1, (end - start) // 2)
        if overlap_tokens and floor < end:
            lo = _min_start(text, end, overlap_tokens, count_tokens, floor)
            if lo < end:
                snapped = bounds.first_in(lo, lo + (end - lo) // 2 + 1, 2)  # sentence or stronger
                if snapped is None:
                    snapped = bounds.first_in(lo, end, 3)  # any whitespace
                next_start = snapped if snapped is not None and snapped < end else lo
        start = next_start


def _max_end(text: str, start: int, max_tokens: int, count_tokens: Callable[[str], int] | None, guess: int) -> int:
    """The largest ``end`` with ``count(text[start:end]) <= max_tokens`` (at least ``start + 1``).

    With a custom counter the search starts from ``guess`` characters, brackets the limit and bisects
    until within ~1.5% of the window (the cut is moved back to a boundary afterwards anyway), so a slow
    tokenizer is called a handful of times per chunk.
    """
    n = len(text)
    if count_tokens is None:
        return min(n, start + max(1, math.floor(max_tokens * CHARS_PER_TOKEN)))
    step = max(16, guess // 8)
    hi = min(n, start + max(1, guess))
    if count_tokens(text[start:hi]) <= max_tokens:
        if hi >= n:
            return n
        lo = hi
        while True:
            hi = min(n, lo + step)
            if count_tokens(text[start:hi]) > max_tokens:
                break
            if hi >= n:
                return n
            lo = hi
            step *= 2
    else:
        while True:
            candidate = hi - step
            if candidate <= start + 1:
                lo = start + 1  # always make progress, even if one character is over budget
                break
            if count_tokens(text[start:candidate]) <= max_tokens:
                lo = candidate
                break
            hi = candidate
            step *= 2
    # invariant: text[start:lo] fits (or lo == start + 1), text[start:hi] does not
    return _narrow(lo, hi, max(1, (lo - start) // 64), lambda end: count_tokens(text[start:end]) <= max_tokens)


def _min_start(text: str, end: int, overlap_tokens: int, count_tokens: Callable[[str], int] | None, floor: int) -> int:
    """About the smallest ``start >= floor`` with ``count(text[start:end]) <= overlap_tokens``."""
    if count_tokens is None:
        return max(floor, end - math.floor(overlap_tokens * CHARS_PER_TOKEN))
    if count_tokens(text[floor:end]) <= overlap_tokens:
        return floor
    # text[floor:end] is too long, text[end:end] fits
    tolerance = max(1, (end - floor) // 64)
    return _narrow(end, floor, tolerance, lambda start: count_tokens(text[start:end]) <= overlap_tokens)


def _narrow(good: int, bad: int, tolerance: int, fits: Callable[[int], bool]) -> int:
    """Bisect between ``good`` (``fits``) and ``bad`` (does not) until they are within ``tolerance``; return
    the last position that fits."""
    while abs(bad - good) > tolerance:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def chunk_budget(context_window: int, prompt_overhead_tokens: int, max_output_tokens: int) -> int:
    """Tokens left for the document in one call.

    ``context_window - prompt_overhead_tokens - max_output_tokens``, less a 10% safety margin for the
    token estimate, and never below :data:`MIN_CHUNK_TOKENS`.
    """
    for name, value in (
        ("context_window", context_window),
        ("prompt_overhead_tokens", prompt_overhead_tokens),
        ("max_output_tokens", max_output_tokens),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigurationError(f"{name} must be a non-negative int, got {value!r}")
    if context_window < 1:
        raise ConfigurationError("context_window must be positive")
    available = context_window - prompt_overhead_tokens - max_output_tokens
    return max(MIN_CHUNK_TOKENS, int(available * 0.9))
