"""Checking a Prompter's options (retries, timeouts, connections, confidence) before anything is built.

Every bad value is a :class:`~dspydantic.ConfigurationError` naming the argument and what it accepts,
never a ``TypeError``/``ValueError``/``UnboundLocalError`` from deep inside a call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .errors import ConfigurationError

#: the keyword arguments of ``Prompter`` (besides the model settings and the backend's own options)
PROMPTER_ARGS = (
    "model",
    "model_id",
    "lm",
    "api_key",
    "api_base",
    "cache",
    "system_prompt",
    "instruction_prompt",
    "field_descriptions",
    "demos",
    "max_retries",
    "lm_retries",
    "retry_backoff",
    "retry_max_time",
    "timeout",
    "connect_timeout",
    "verify",
    "proxy",
    "max_connections",
    "logprobs",
    "context_window",
    "require_grounding",
    "confidence_samples",
    "sample_temperature",
    "calibrator",
)
#: options of the HTTP transport (only OpenAI-compatible endpoints use it)
TRANSPORT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": None,
    "verify": True,
    "proxy": None,
    "max_connections": 100,
}


def check_keywords(given: Iterable[str], own: Iterable[str], what: str, *, shared: Iterable[str] = ()) -> None:
    """A :class:`ConfigurationError` for keywords ``what`` does not take: names each unknown one with the
    closest accepted name (``n_thread`` -> ``n_threads``), then ``what``'s own options and the ``shared`` ones
    (the Prompter's), instead of a ``TypeError`` from deep inside a constructor."""
    own, shared = sorted(set(own)), sorted(set(shared) - set(own))
    unknown = sorted(set(given) - set(own) - set(shared))
    if not unknown:
        return
    import difflib  # only for the message of a mistake

    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, [*own, *shared], n=1, cutoff=0.75)
        hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    message = f"unknown argument(s) {', '.join(hints)} for {what}; its own options: {own or 'none'}"
    raise ConfigurationError(message + (f"; and every Prompter's: {shared}" if shared else ""))


def count(name: str, value: Any, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigurationError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def seconds(name: str, value: Any, *, allow_none: bool = False, allow_zero: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        what = "a number of seconds >= 0" if allow_zero else "a positive number of seconds"
        raise ConfigurationError(f"{name} must be {what}{' or None' if allow_none else ''}, got {value!r}")
    return float(value)


def check_runtime(
    *,
    max_retries: Any,
    lm_retries: Any,
    retry_backoff: Any,
    retry_max_time: Any,
    timeout: Any,
    connect_timeout: Any,
    verify: Any,
    proxy: Any,
    max_connections: Any,
    logprobs: Any,
    context_window: Any,
) -> None:
    count("max_retries", max_retries, low=0)
    count("lm_retries", lm_retries, low=0)
    seconds("retry_backoff", retry_backoff, allow_zero=True)
    seconds("retry_max_time", retry_max_time, allow_none=True)
    seconds("timeout", timeout)
    seconds("connect_timeout", connect_timeout, allow_none=True)
    if not isinstance(verify, bool | str):
        raise ConfigurationError(f"verify must be True, False or the path of a CA bundle, got {verify!r}")
    if proxy is not None and not isinstance(proxy, str):
        raise ConfigurationError(f"proxy must be a URL string or None, got {proxy!r}")
    count("max_connections", max_connections, low=1)
    if logprobs is not None and not isinstance(logprobs, bool):
        raise ConfigurationError(f"logprobs must be True, False or None, got {logprobs!r}")
    if context_window is not None:
        count("context_window", context_window, low=256)


#: at most this many extra sampled answers per extraction (each is one more LM call); ``load`` checks the same
MAX_CONFIDENCE_SAMPLES = 64
#: the temperature the extra samples are drawn at, unless ``sample_temperature`` says otherwise
DEFAULT_SAMPLE_TEMPERATURE = 0.7


def check_confidence(*, confidence_samples: Any, sample_temperature: Any, calibrator: Any) -> None:
    """The confidence options (``require_grounding`` is checked against the schema by the field plan)."""
    count("confidence_samples", confidence_samples, low=0)
    if confidence_samples > MAX_CONFIDENCE_SAMPLES:
        raise ConfigurationError(
            f"confidence_samples must be at most {MAX_CONFIDENCE_SAMPLES} (each is one more LM call per "
            f"extraction), got {confidence_samples!r}"
        )
    if not sample_temperature_ok(sample_temperature):
        raise ConfigurationError(f"sample_temperature must be a number in (0, 2], got {sample_temperature!r}")
    if calibrator is not None:
        from .confidence.calibration import Calibrator

        if not isinstance(calibrator, Calibrator):
            raise ConfigurationError(
                "calibrator must be a dspydantic.confidence.Calibrator (fitted by prompter.calibrate(...) or "
                f"optimize()) or None, got {type(calibrator).__name__}"
            )


def sample_temperature_ok(value: Any) -> bool:
    """A temperature the extra samples can be drawn at: a number in (0, 2] (at 0 every sample is the same)."""
    return (
        not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value) and 0.0 < value <= 2.0
    )
