"""Cost of LM usage in USD, from the price table LiteLLM ships (its bundled JSON, read without importing
litellm, which is slow to import). Prices are never typed by hand here.

``cost_usd(model_id, prompt_tokens, completion_tokens, batch=False)`` returns ``None`` when the price is unknown
(including the batch rate of a model whose table entry has none), 0.0 for the embedded local model.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path
from typing import Any

_TABLE_FILE = "model_prices_and_context_window_backup.json"
_table: dict[str, Any] | None = None
_lock = threading.Lock()


def _prices() -> dict[str, Any]:
    global _table
    with _lock:
        if _table is None:
            _table = {}
            spec = importlib.util.find_spec("litellm")
            for location in (spec.submodule_search_locations or []) if spec is not None else []:
                path = Path(location) / _TABLE_FILE
                if path.is_file():
                    try:
                        loaded = json.loads(path.read_text(encoding="utf-8"))
                    except (OSError, ValueError):
                        continue
                    if isinstance(loaded, dict):
                        _table = loaded
                        break
        return _table


def _entry(model_id: str) -> dict[str, Any] | None:
    table = _prices()
    provider, _, name = model_id.partition("/")
    for key in (model_id, name, f"{provider}/{name}"):
        entry = table.get(key) if key else None
        if isinstance(entry, dict):
            return entry
    return None


def cost_usd(model_id: str | None, prompt_tokens: int, completion_tokens: int, batch: bool = False) -> float | None:
    """USD for the tokens at the model's listed rate (``batch=True``: the provider's batch-API rate)."""
    if not model_id:
        return None
    if model_id == "local" or model_id.startswith(("local/", "local:")):
        return 0.0
    entry = _entry(model_id)
    if entry is None:
        return None
    suffix = "_batches" if batch else ""
    pin = entry.get(f"input_cost_per_token{suffix}")
    pout = entry.get(f"output_cost_per_token{suffix}")
    if not isinstance(pin, int | float) or not isinstance(pout, int | float):
        return None
    return float(pin) * prompt_tokens + float(pout) * completion_tokens
