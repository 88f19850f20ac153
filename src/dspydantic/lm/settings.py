"""``ModelSettings``: the sampling settings of a request, typed, validated and frozen.

Every backend accepts them (OpenAI-compatible servers, LiteLLM, a ``dspy.LM``, the embedded model where they
mean something) and the cache key includes them all: two Prompters that differ only in ``top_p`` never share
a cached answer.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigurationError

__all__ = ["DEFAULT_SETTINGS", "SETTING_NAMES", "ModelSettings", "settings_from"]

#: the keyword arguments a Prompter (and every backend) accepts as model settings
SETTING_NAMES = (
    "temperature",
    "max_tokens",
    "top_p",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "extra_body",
)
#: body fields ``extra_body`` may not replace: they are the request itself
_RESERVED_BODY = frozenset({"model", "messages"})


def _number(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ConfigurationError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def _integer(name: str, value: Any, low: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an int, got {value!r}")
    if low is not None and value < low:
        raise ConfigurationError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


def _stop(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, list | tuple) or not all(isinstance(s, str) and s for s in value):
        raise ConfigurationError(f"stop must be a non-empty string or a list of them, got {value!r}")
    return tuple(value) or None


def _extra_body(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigurationError(f"extra_body must be a dict with string keys, got {value!r}")
    reserved = sorted(_RESERVED_BODY & set(value))
    if reserved:
        raise ConfigurationError(f"extra_body may not set {reserved}: they are the request itself")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"extra_body must be JSON-serialisable: {exc}") from None
    return copy.deepcopy(dict(value)) or None


class ModelSettings:
    """Sampling settings (``None``: the provider's default). Frozen; compare and hash by value.

    ``stop`` is kept as a tuple; ``extra_body`` is a dict merged into the request body of
    OpenAI-compatible servers (passed as ``extra_body`` to LiteLLM and a ``dspy.LM``).
    """

    __slots__ = (
        "_fingerprint",
        "_params",
        "extra_body",
        "frequency_penalty",
        "max_tokens",
        "presence_penalty",
        "seed",
        "stop",
        "temperature",
        "top_p",
    )
    temperature: float | None
    max_tokens: int | None
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...] | None
    presence_penalty: float | None
    frequency_penalty: float | None
    extra_body: dict[str, Any] | None
    _params: dict[str, Any]
    _fingerprint: str

    def __init__(
        self,
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | list[str] | tuple[str, ...] | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        values = {
            "temperature": _number("temperature", temperature, 0.0, 2.0),
            "max_tokens": _integer("max_tokens", max_tokens, 1),
            "top_p": _number("top_p", top_p, 0.0, 1.0, low_open=True),
            "seed": _integer("seed", seed, None),
            "stop": _stop(stop),
            "presence_penalty": _number("presence_penalty", presence_penalty, -2.0, 2.0),
            "frequency_penalty": _number("frequency_penalty", frequency_penalty, -2.0, 2.0),
            "extra_body": _extra_body(extra_body),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)
        params: dict[str, Any] = {k: v for k, v in values.items() if v is not None and k != "extra_body"}
        if self.stop is not None:
            params["stop"] = list(self.stop)
        object.__setattr__(self, "_params", params)
        canonical = {**params, **({"extra_body": values["extra_body"]} if values["extra_body"] else {})}
        object.__setattr__(
            self, "_fingerprint", json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("ModelSettings is frozen: use .replace(...)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelSettings) and other._fingerprint == self._fingerprint

    def __hash__(self) -> int:
        return hash(self._fingerprint)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in SETTING_NAMES if getattr(self, k) is not None)
        return f"ModelSettings({shown})"

    def __reduce__(self) -> Any:
        return (_rebuild, (self.as_dict(),))

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> ModelSettings:
        return cls(**{k: kwargs[k] for k in SETTING_NAMES if k in kwargs})

    def as_dict(self) -> dict[str, Any]:
        """Every setting that is set (``stop`` as a list), e.g. for saving."""
        out = {k: getattr(self, k) for k in SETTING_NAMES if getattr(self, k) is not None}
        if "stop" in out:
            out["stop"] = list(out["stop"])
        return out

    def replace(self, **changes: Any) -> ModelSettings:
        unknown = set(changes) - set(SETTING_NAMES)
        if unknown:
            raise ConfigurationError(f"unknown model setting(s) {sorted(unknown)}; known: {list(SETTING_NAMES)}")
        return ModelSettings(**{**self.as_dict(), **changes})

    def over(self, defaults: ModelSettings) -> ModelSettings:
        """These settings on top of ``defaults`` (ours win; ``extra_body`` dicts are merged)."""
        if not defaults._params and not defaults.extra_body:
            return self
        merged = {**defaults.as_dict(), **self.as_dict()}
        if defaults.extra_body and self.extra_body:
            merged["extra_body"] = {**defaults.extra_body, **self.extra_body}
        return ModelSettings(**merged)

    @property
    def params(self) -> dict[str, Any]:
        """The OpenAI chat-completions parameters (without ``extra_body``); do not mutate."""
        return self._params

    @property
    def fingerprint(self) -> str:
        """A canonical string of every setting (for cache keys)."""
        return self._fingerprint


def _rebuild(values: dict[str, Any]) -> ModelSettings:
    return ModelSettings(**values)


DEFAULT_SETTINGS = ModelSettings()


def settings_from(settings: ModelSettings | None, kwargs: Mapping[str, Any]) -> ModelSettings:
    """A backend's default settings from its ``settings=`` and setting keywords (the keywords win)."""
    if settings is not None and not isinstance(settings, ModelSettings):
        raise ConfigurationError(f"settings must be a ModelSettings, got {type(settings).__name__}")
    base = settings or DEFAULT_SETTINGS
    if not kwargs:
        return base
    return ModelSettings.from_kwargs(kwargs).over(base)
