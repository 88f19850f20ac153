"""``Prompter.load``: read a saved directory (either format) and build a Prompter from it, trusting nothing.

A saved directory may come from someone else (a colleague, a repository, a bucket). What it holds decides
the prompts, never where requests and keys go:

* the endpoint and the credentials come from the caller (``api_base=``, ``api_key=``, ``lm=``) or the
  environment (``OPENAI_BASE_URL``, ``OPENAI_API_KEY``...). The ``api_base`` a manifest names is used only
  with ``trust_saved_endpoint=True``, and then never with a key from the environment: only with the
  ``api_key=`` of that same call (none at all otherwise);
* a saved ``model_id`` is used only when it names a provider and a model, never a file (``local:/path``)
  or a URL;
* every file is read by :mod:`.files` (regular files inside the directory, listed and hashed in the
  manifest), every setting checked by :mod:`.settings`; anything malformed is a ``PersistenceError``.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from .._schema import ensure_model, model_schema
from ..errors import ConfigurationError, DspydanticError, PersistenceError, SchemaDriftWarning
from . import atomic
from .drift import schema_drift
from .files import SavedDir
from .format import MANIFEST, read_current
from .legacy import LEGACY_METADATA, read_legacy
from .saved import SavedPrompter

if TYPE_CHECKING:
    from .._prompter import Prompter

__all__ = ["is_prompter_dir", "load_prompter", "read_saved"]

_PROMPT_KWARGS = ("system_prompt", "instruction_prompt", "field_descriptions", "demos")
_MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.:@+-][A-Za-z0-9_.:@+/-]*$")


def is_prompter_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file() or (path / LEGACY_METADATA).is_file()


def read_saved(path: str | os.PathLike[str]) -> SavedPrompter:
    """Read and check a saved prompter directory (new or 0.1.x format) without building a Prompter."""
    given = Path(path).expanduser()
    directory = Path(os.path.realpath(given)) if given.is_symlink() else given.absolute()
    # the shared side of the saver's lock, held from the first look at the path: a concurrent save never
    # swaps the directory (nor removes the previous one a reader chose) while it is looked at and read
    with atomic.reading(directory):
        return _read_saved_locked(given, directory)


def _read_saved_locked(given: Path, directory: Path) -> SavedPrompter:
    if not directory.exists():
        backup = atomic.find_backup(directory, is_prompter_dir)
        if backup is not None:
            warnings.warn(
                f"{str(given)!r} does not exist, but a save into it was interrupted; loading the previous "
                f"save from {str(backup)!r}. Save the prompter again to complete it.",
                UserWarning,
                stacklevel=4,
            )
            directory = backup
        else:
            raise PersistenceError(
                f"no saved prompter at {str(given)!r} (resolved to {str(directory)!r}): the "
                "directory does not exist. Check the path, or create it with prompter.save(path)."
            )
    if not directory.is_dir():
        raise PersistenceError(
            f"{str(given)!r} is a file; Prompter.load() expects the directory written by Prompter.save()"
        )
    with SavedDir(directory) as saved_dir:
        try:
            if saved_dir.is_file(MANIFEST):
                return read_current(saved_dir)
            if saved_dir.is_file(LEGACY_METADATA):
                return read_legacy(saved_dir)
            for name in (MANIFEST, LEGACY_METADATA):
                if saved_dir.lexists(name):  # there, but not a regular file: read() says what it is
                    saved_dir.read(name, what="its manifest")
        except RecursionError:
            raise PersistenceError(f"{str(directory)!r} holds data nested too deeply to be a saved prompter") from None
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            if isinstance(exc, DspydanticError):
                raise
            # a backstop: the readers check every value they use; whatever slipped through is still malformed
            raise PersistenceError(
                f"{str(directory)!r} is not a saved prompter dspydantic can read ({type(exc).__name__}: "
                f"{exc!s:.200}). Save the prompter again."
            ) from None
    raise PersistenceError(
        f"{str(given)!r} is not a saved dspydantic prompter: it has no {MANIFEST} (nor the "
        f"{LEGACY_METADATA} of dspydantic 0.1.x). Point load() at the directory you passed to save()."
    )


def _saved_model_id(saved: SavedPrompter) -> str | None:
    """The saved model id, if it only names a provider and a model (never a file, a path or a URL)."""
    model_id = saved.model_id
    if model_id is None:
        return None
    if model_id == "local":
        return model_id
    if model_id.startswith("local/"):
        from ..lm._assemble import KNOWN_MODELS

        if model_id[len("local/"):] in KNOWN_MODELS:
            return model_id
    elif _MODEL_ID.match(model_id) and "://" not in model_id and ".." not in model_id:
        return model_id
    raise PersistenceError(
        f"{str(saved.path / MANIFEST)!r} names the model {model_id!r:.120}, which is not a provider/model id "
        "dspydantic uses from a saved file (a file path or a URL never is). Pass model_id=... (or lm=...) to load()."
    )


def _endpoint(saved: SavedPrompter, model_id: str | None, kwargs: dict[str, Any], trust: bool) -> dict[str, Any]:
    """The endpoint keywords the saved directory contributes: none, unless the caller trusts it."""
    from ..lm.openai_compat import env_api_base

    if not saved.api_base or kwargs.get("lm") is not None or kwargs.get("api_base") is not None:
        return {}
    if not trust:
        if env_api_base() is None and model_id == saved.model_id:
            warnings.warn(
                f"the prompter at {str(saved.path)!r} was saved with the endpoint {saved.api_base!r}; load() does "
                "not use an endpoint named by a file. Pass api_base=... (or set OPENAI_BASE_URL), or "
                "trust_saved_endpoint=True if you trust this directory.",
                UserWarning,
                stacklevel=4,
            )
        return {}
    if model_id != saved.model_id:
        raise ConfigurationError(
            f"trust_saved_endpoint=True: the saved endpoint {saved.api_base!r} serves {saved.model_id!r}, not "
            f"{model_id!r}; pass api_base=... for another model"
        )
    out: dict[str, Any] = {"api_base": saved.api_base}
    if kwargs.get("api_key") is None:
        if not str(model_id).startswith("openai/"):
            raise ConfigurationError(
                "trust_saved_endpoint=True sends no key from the environment to an endpoint a file named: pass "
                "api_key=... for it (api_key='' for none)"
            )
        out["api_key"] = ""  # OpenAI-compatible: no key at all (never OPENAI_API_KEY)
    return out


def _model(saved: SavedPrompter, model: type[BaseModel] | None) -> tuple[type[BaseModel] | None, dict[str, Any] | None]:
    """The model class to build the Prompter with, and the schema to show the LM (when rebuilt)."""
    if model is not None:
        use_model = ensure_model(model)
        compatible, incompatible = schema_drift(saved.schema, model_schema(use_model))
        if incompatible:
            raise PersistenceError(
                f"{use_model.__name__} does not match the model the prompter at {str(saved.path)!r} was saved "
                f"with ({saved.model_name}):\n  - " + "\n  - ".join(incompatible) + "\nIts prompts, field "
                "descriptions and demos were made for the saved fields. Load it with the model it was saved "
                "with (or without model= to rebuild that model), or build a new Prompter for the changed "
                "model, optimize it and save it again."
            )
        if compatible:
            warnings.warn(
                SchemaDriftWarning(
                    f"{use_model.__name__} differs from the model the prompter at {str(saved.path)!r} was "
                    "saved with, in compatible ways:\n  - " + "\n  - ".join(compatible) + "\nThe saved prompts "
                    "are used as they are (saved field descriptions override the model's)."
                ),
                stacklevel=4,
            )
        return use_model, None
    if saved.free_text:
        return None, None
    from .._rebuild import rebuild_model

    return rebuild_model(saved.schema, saved.model_name), copy.deepcopy(saved.schema)


def load_prompter(
    cls: type[Prompter],
    path: str | os.PathLike[str],
    model: type[BaseModel] | None = None,
    model_id: str | None = None,
    *,
    trust_saved_endpoint: bool = False,
    **kwargs: Any,
) -> Prompter:
    """Build a Prompter from a saved directory (see :meth:`Prompter.load` and the module docstring)."""
    clash = [k for k in _PROMPT_KWARGS if k in kwargs]
    if clash:
        raise ConfigurationError(
            f"load() restores {', '.join(clash)} from the saved directory; to change them, set "
            "prompter.state = prompter.state.replace(...) after loading"
        )
    if not isinstance(trust_saved_endpoint, bool):
        raise ConfigurationError(f"trust_saved_endpoint must be True or False, got {trust_saved_endpoint!r}")
    saved = read_saved(path)
    try:
        use_model, base_schema = _model(saved, model)
    except (RecursionError, ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        if isinstance(exc, PersistenceError | ConfigurationError):
            raise
        raise PersistenceError(
            f"{str(saved.path)!r} holds a schema dspydantic cannot use ({type(exc).__name__}: {exc!s:.200})"
        ) from None

    ctor: dict[str, Any] = dict(saved.settings)
    if model_id is None and kwargs.get("lm") is None:
        model_id = _saved_model_id(saved)
    ctor.update(_endpoint(saved, model_id, kwargs, trust_saved_endpoint))
    if kwargs.get("lm") is not None:
        ctor.pop("timeout", None)
    ctor.update(kwargs)
    ctor.update(
        system_prompt=saved.original.system_prompt,
        instruction_prompt=saved.original.instruction_prompt,
        field_descriptions=dict(saved.original.field_descriptions),
        demos=saved.original.demos,
    )
    prompter = cls(use_model, model_id, **ctor)
    if base_schema is not None:
        # the LM is shown exactly the saved schema, even where the rebuilt class would render it differently
        prompter.set_base_schema(base_schema)
    original = prompter.state
    prompter.state = saved.current if saved.current != saved.original else original
    prompter._original_state = original
    prompter.optimization_result = saved.report
    if saved.calibrator is not None and "calibrator" not in kwargs:
        prompter.calibrator = saved.calibrator
    return prompter
