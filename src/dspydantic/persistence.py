"""dspydantic 0.1's ``dspydantic.persistence``: its state-file functions, on our loader.

``Prompter.save(path)`` / ``Prompter.load(path)`` replace them: they write and read a versioned
directory (and read 0.1's too). :func:`load_prompter_state` reads either format;
:func:`save_prompter_state` writes 0.1's three files (``dspydantic_metadata.json``,
``optimized_state.json``, ``model_schema.json``), which ``Prompter.load`` reads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ._compat import legacy_demo_json, warn_deprecated
from .errors import PersistenceError
from .types import PrompterState

__all__ = ["PersistenceError", "PrompterState", "load_prompter_state", "save_prompter_state"]

_SECRET_KEYS = frozenset({"api_key", "apikey", "key", "token", "secret", "password", "authorization"})


def save_prompter_state(state: PrompterState, save_path: str | os.PathLike[str]) -> None:
    """Write ``state`` in dspydantic 0.1's format (an ``api_key`` in ``model_config`` is left out)."""
    from .persist.legacy import LEGACY_METADATA, LEGACY_SCHEMA, LEGACY_STATE

    warn_deprecated("save_prompter_state()", "use prompter.save(path); Prompter.load(path) reads both formats")
    target = Path(save_path)
    config = {k: v for k, v in (state.model_config or {}).items() if str(k).lower() not in _SECRET_KEYS}
    files: dict[str, Any] = {
        LEGACY_METADATA: {
            "version": state.version,
            "model_id": state.model_id,
            "model_config": config,
            "metadata": state.metadata,
        },
        LEGACY_STATE: {
            "optimized_descriptions": state.optimized_descriptions,
            "optimized_system_prompt": state.optimized_system_prompt,
            "optimized_instruction_prompt": state.optimized_instruction_prompt,
            "optimized_demos": state.optimized_demos or [],
        },
        LEGACY_SCHEMA: state.model_schema,
    }
    try:
        target.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            tmp = target / f".{name}.tmp"
            tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, target / name)
    except (OSError, TypeError, ValueError) as exc:
        raise PersistenceError(f"could not save the prompter state to {str(target)!r}: {exc}") from exc


def load_prompter_state(load_path: str | os.PathLike[str]) -> PrompterState:
    """Read a saved prompter directory (ours or 0.1's) as 0.1's :class:`PrompterState`."""
    from ._schema import default_descriptions
    from .persist import read_saved

    warn_deprecated("load_prompter_state()", "use Prompter.load(path) (and prompter.state for the prompts)")
    saved = read_saved(load_path)
    current = saved.current
    return PrompterState(
        model_schema=saved.schema,
        optimized_descriptions={**default_descriptions(saved.schema), **dict(current.field_descriptions)},
        optimized_system_prompt=current.system_prompt,
        optimized_instruction_prompt=current.instruction_prompt,
        model_id=saved.model_id or "",
        model_config={"api_base": saved.api_base} if saved.api_base else {},
        version=saved.library_version or "",
        metadata={},
        optimized_demos=[legacy_demo_json(d) for d in current.demos],
    )
