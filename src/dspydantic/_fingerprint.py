"""The one identity of a prompter: :attr:`Prompter.fingerprint` and :attr:`Prompter.version`.

The fingerprint is a sha256 over everything that decides what a prompter answers, the same in every process
(canonical JSON, no salted ``hash()``): the schema the LM is shown (with the effective field descriptions),
its name, the system and instruction prompts as sent (defaults filled in), the demos, the LM (the model id,
or the backend's cache id for an ``lm=`` object) and the sampling settings. Not the endpoint, the key, the
retry policy, the cache or the save time: a prompter and its ``Prompter.load`` copy agree. The version is
its first 12 hex digits.

The store (document ids), the Celery workers, the service (``prompter_version``), the file pipeline and
provider batch jobs (``custom_id``, resume check) all use this one.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._prompter import Prompter

__all__ = ["FINGERPRINT_VERSION", "fingerprint_of", "members", "prompter_fingerprint", "prompter_lm"]

#: version of the recipe (a change gives every prompter a new fingerprint: old batch jobs are then refused
#: rather than matched wrongly, stored documents are extracted again)
FINGERPRINT_VERSION = 2


def prompter_lm(prompter: Prompter) -> str:
    """The model id a prompter runs on (its backend's cache id when it was built from an ``lm=`` object)."""
    return prompter.model_id or str(getattr(prompter.backend, "cache_id", type(prompter.backend).__name__))


def prompter_fingerprint(prompter: Prompter) -> str:
    """sha256 hex digest of everything that decides what ``prompter`` answers (see the module docstring)."""
    from ._render import DEFAULT_INSTRUCTION_PROMPT, DEFAULT_SYSTEM_PROMPT

    state = prompter.state
    renderer = prompter.renderer
    payload = {
        "v": FINGERPRINT_VERSION,
        "lm": prompter_lm(prompter),
        "schema_name": renderer.schema_name,
        "schema": renderer.schema,
        "free_text": bool(prompter.free_text),
        "system": state.system_prompt or DEFAULT_SYSTEM_PROMPT,
        "instruction": state.instruction_prompt or DEFAULT_INSTRUCTION_PROMPT,
        "field_descriptions": dict(prompter.field_descriptions),
        "demos": [d.to_json() for d in state.demos],
        **({"choice_bias": {k: dict(v) for k, v in state.choice_bias.items()}} if state.choice_bias else {}),
        **({"nearest_demos": state.nearest_demos, "demo_pool": [d.to_json() for d in state.demo_pool]}
           if state.nearest_demos else {}),
        **({"field_values": {k: list(v) for k, v in state.field_values.items()}} if state.field_values else {}),
        "settings": prompter.settings.fingerprint,
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def members(obj: Any) -> list[Any]:
    """The prompters of a fallback chain or an A/B router (empty for a plain Prompter)."""
    if hasattr(obj, "prompters"):
        return list(obj.prompters)
    if hasattr(obj, "variants"):
        return list(obj.variants.values())
    return []


def fingerprint_of(obj: Any) -> str:
    """The fingerprint of a Prompter, or of a fallback chain / A/B router (over its members, in order)."""
    inner = members(obj)
    if inner:
        h = hashlib.sha256(b"dspydantic.members")
        for m in inner:
            h.update(fingerprint_of(m).encode())
        return h.hexdigest()
    fp = getattr(obj, "fingerprint", None)
    if isinstance(fp, str):
        return fp
    return hashlib.sha256(repr(obj).encode()).hexdigest()
