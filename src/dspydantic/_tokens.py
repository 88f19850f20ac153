"""The one token estimate used where no tokenizer is at hand: chunking a long document, reserving a call
against a token budget, counting the usage of an LM that reports none.

Conservative on purpose (3.5 characters a token; English text is ~4): a chunk sized with it fits, and a
budget charged with it is not overrun.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["CHARS_PER_TOKEN", "IMAGE_TOKENS", "estimate_message_tokens", "estimate_tokens"]

#: characters per token assumed by :func:`estimate_tokens`
CHARS_PER_TOKEN = 3.5
#: tokens counted for one image part of a message
IMAGE_TOKENS = 256


def estimate_tokens(text: str) -> int:
    """``ceil(len(text) / CHARS_PER_TOKEN)``."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_message_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """The prompt tokens of chat messages: their text by :func:`estimate_tokens`, :data:`IMAGE_TOKENS` for
    each other content part (an image)."""
    chars = 0
    images = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping) and part.get("type") == "text":
                    chars += len(str(part.get("text", "")))
                else:
                    images += 1
    return math.ceil(chars / CHARS_PER_TOKEN) + IMAGE_TOKENS * images
