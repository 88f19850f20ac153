"""The price of LM tokens, from the price table LiteLLM ships (never typed by hand, never fetched).

LiteLLM bundles ``model_prices_and_context_window_backup.json`` in its package. It is read directly as
JSON, located with ``importlib.util.find_spec`` (importing litellm itself takes seconds), once per process,
on the first lookup. The embedded local model costs nothing; an unknown model has no price (``None``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("dspydantic")

PRICE_FILE = "model_prices_and_context_window_backup.json"

_lock = threading.Lock()
Prices = tuple[float, float, float | None, float | None]
_table: dict[str, Prices] | None = None
_prices: dict[str, Prices | None] = {}


def _load_table() -> dict[str, Prices]:
    """Model name -> its prices, for the models the table prices. Only those four numbers per model are
    built: each object of the file becomes its prices (or the priced entries inside it) as soon as it is
    parsed, so the file's ~5 MB of Python objects never exist at once (they would stay in the process's
    high-water mark, and in its fragmented heap, for the rest of a batch)."""
    global _table
    with _lock:
        if _table is None:
            table: dict[str, Prices] = {}
            try:
                spec = importlib.util.find_spec("litellm")
                if spec is not None and spec.origin:
                    path = Path(spec.origin).parent / PRICE_FILE
                    data = json.loads(path.read_bytes(), object_pairs_hook=_priced)
                    if isinstance(data, dict):
                        table = data
            except (OSError, ValueError, ImportError) as exc:  # a price is an estimate, never a failure
                log.debug("no LM price table: %r", exc)
            _table = table
        return _table


def _priced(pairs: list[tuple[str, Any]]) -> Prices | dict[str, Prices]:
    """One JSON object of the price file as it is parsed: a model's entry becomes its prices; any other
    object (the file itself, or a nested one) keeps only the entries that became prices."""
    row = _row(dict(pairs))
    if row is not None:
        return row
    return {k: v for k, v in pairs if isinstance(v, tuple)}


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _row(entry: Any) -> Prices | None:
    if not isinstance(entry, dict):
        return None
    pin, pout = _num(entry.get("input_cost_per_token")), _num(entry.get("output_cost_per_token"))
    if pin is None or pout is None:
        return None
    batch_in, batch_out = entry.get("input_cost_per_token_batches"), entry.get("output_cost_per_token_batches")
    return (pin, pout, _num(batch_in), _num(batch_out))


def price(model_id: str | None) -> Prices | None:
    """USD per (prompt token, completion token, batch prompt token or None, batch completion token or None) of
    ``model_id`` (``"openai/gpt-4o-mini"``, ``"gpt-4o-mini"``, ``"anthropic/claude-..."``), ``None`` when
    the table does not know it. The local model is free."""
    if not model_id:
        return None
    if model_id in _prices:
        return _prices[model_id]
    from .lm import is_local_id

    found: Prices | None
    if is_local_id(model_id):
        found = (0.0, 0.0, 0.0, 0.0)
    else:
        table = _load_table()
        name = model_id.partition("/")[2]
        found = table.get(model_id) or (table.get(name) if name else None)
    _prices[model_id] = found
    return found


def cost_usd(
    model_id: str | None, prompt_tokens: int, completion_tokens: int, *, batch: bool = False
) -> float | None:
    """USD for the tokens of ``model_id`` (provider batch-job prices with ``batch=True``); ``None`` when the
    table has no such price for the model."""
    p = price(model_id)
    if p is None:
        return None
    pin, pout = (p[2], p[3]) if batch else (p[0], p[1])
    if pin is None or pout is None:
        return None
    return pin * prompt_tokens + pout * completion_tokens
