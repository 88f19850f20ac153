"""The settings a saved prompter carries, their types and their ranges: one table for save and load.

``save()`` refuses a value outside it (so every save loads again), ``load()`` refuses one too: a saved
directory may come from someone else, and ``lm_retries=1000000`` or ``timeout="soon"`` must not reach the
constructor. Unknown keys are ignored (never passed on).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._options import DEFAULT_SAMPLE_TEMPERATURE, MAX_CONFIDENCE_SAMPLES
from ..errors import PersistenceError

if TYPE_CHECKING:
    from .._prompter import Prompter

__all__ = ["MODEL_SETTINGS", "SavedSettings", "check_settings", "prompter_settings"]

#: model settings saved (not extra_body: it may hold anything, so it is not written to disk)
MODEL_SETTINGS = ("temperature", "max_tokens", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty")
_DAY = 86400.0


class SavedSettings(BaseModel):
    """The saved settings: strict types (no ``"1"`` for 1, no bool for an int), finite numbers, sane ranges."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True, allow_inf_nan=False)

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=10_000_000)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = Field(None, max_length=4096)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    max_retries: int | None = Field(None, ge=0, le=100)
    lm_retries: int | None = Field(None, ge=0, le=100)
    retry_backoff: float | None = Field(None, ge=0.0, le=3600.0)
    retry_max_time: float | None = Field(None, gt=0.0, le=7 * _DAY)
    timeout: float | None = Field(None, gt=0.0, le=_DAY)
    logprobs: bool | None = None
    require_grounding: bool | Annotated[list[str], Field(max_length=10_000)] | None = None
    confidence_samples: int | None = Field(None, ge=0, le=MAX_CONFIDENCE_SAMPLES)
    sample_temperature: float | None = Field(None, gt=0.0, le=2.0)


def check_settings(settings: Any, where: str, *, saving: bool = False) -> dict[str, Any]:
    """The settings that are set, checked against :class:`SavedSettings`; a :class:`PersistenceError`
    naming every bad key otherwise."""
    if not isinstance(settings, dict):
        raise PersistenceError(f"{where}: the settings are not a JSON object")
    try:
        checked = SavedSettings.model_validate(settings)
    except ValidationError as exc:
        bad = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][:1])}={_short(settings.get(str(e['loc'][0])))}: {e['msg']}"
            for e in exc.errors()
        )
        if saving:
            raise PersistenceError(
                f"could not save the prompter: a setting is outside what a saved prompter may hold ({bad})"
            ) from None
        raise PersistenceError(
            f"{where} holds settings dspydantic does not accept ({bad}). A saved directory may come from "
            "someone else: fix the value in the file, or save the prompter again."
        ) from None
    return checked.model_dump(exclude_none=True, exclude_unset=True)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def prompter_settings(prompter: Prompter) -> dict[str, Any]:
    """The settings of ``prompter`` that a save keeps (checked: a save never writes what a load refuses)."""
    out: dict[str, Any] = {}
    model_settings = getattr(prompter, "settings", None)
    if model_settings is not None:
        out.update({k: v for k, v in model_settings.as_dict().items() if k in MODEL_SETTINGS})
    for name in ("max_retries", "lm_retries", "retry_backoff", "retry_max_time"):
        value = getattr(prompter, name, None)
        if value is not None:
            out[name] = value
    timeout = getattr(prompter.backend, "timeout", None)
    if isinstance(timeout, int | float) and not isinstance(timeout, bool):
        out["timeout"] = timeout
    default_logprobs = bool(getattr(prompter.backend, "cheap_logprobs", False))
    if getattr(prompter, "logprobs", default_logprobs) != default_logprobs:  # an explicit choice
        out["logprobs"] = bool(prompter.logprobs)
    require = getattr(prompter, "require_grounding", None)
    if require is not None:  # an explicit choice (None: the backend's default, which the loading backend applies)
        out["require_grounding"] = require if isinstance(require, bool) else sorted(str(p) for p in require)
    if getattr(prompter, "confidence_samples", 0):
        out["confidence_samples"] = int(prompter.confidence_samples)
    if getattr(prompter, "sample_temperature", DEFAULT_SAMPLE_TEMPERATURE) != DEFAULT_SAMPLE_TEMPERATURE:
        out["sample_temperature"] = float(prompter.sample_temperature)
    check_settings(out, "the prompter", saving=True)
    return out
