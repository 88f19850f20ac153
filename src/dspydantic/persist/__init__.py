"""Save and load a :class:`~dspydantic.Prompter` as a versioned directory of plain JSON.

* :mod:`.format` — the files of format version 1 and how they are read back;
* :mod:`.state` — the one JSON codec of a ``PromptState`` (prompts.json and report.json);
* :mod:`.settings` — the saved settings, their types and ranges;
* :mod:`.files` — reading a directory that may come from someone else (regular files inside it only);
* :mod:`.atomic` — writing a directory atomically, reading it while no writer swaps it;
* :mod:`.legacy` — the directories of dspydantic 0.1.x;
* :mod:`.drift` — how the saved schema differs from the model it is loaded with;
* :mod:`.save` / :mod:`.load` — ``Prompter.save`` and ``Prompter.load``.
"""

from __future__ import annotations

from ..errors import PersistenceError, SchemaDriftWarning
from .drift import schema_drift
from .format import FORMAT, FORMAT_VERSION, MANIFEST
from .load import load_prompter, read_saved
from .save import save_prompter
from .saved import SavedPrompter, sanitize_api_base

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "PersistenceError",
    "SavedPrompter",
    "SchemaDriftWarning",
    "load_prompter",
    "read_saved",
    "sanitize_api_base",
    "save_prompter",
    "schema_drift",
]
