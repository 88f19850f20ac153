"""The training / validation split of an optimization, and the baseline's plain demos from training examples."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._example import Example
from .._render import Demo, PromptState
from ..errors import ConfigurationError
from .documents import normalized_output

if TYPE_CHECKING:
    from .._prompter import Prompter

__all__ = ["Split", "plain_demos", "split_examples"]

log = logging.getLogger("dspydantic")


@dataclass
class Split:
    train: list[Example]
    val: list[Example]


def _input_key(ex: Example) -> str:
    return json.dumps(ex.input_kwargs(), sort_keys=True, default=str)


def split_examples(
    items: list[Example], valset: Sequence[Example] | None, train_split: float, seed: int, max_val: int | None
) -> Split:
    """Shuffle ``items`` with ``seed`` and split them (``valset`` replaces the split: training examples whose
    input also appears in it are dropped); ``max_val`` caps the validation split."""
    rng = random.Random(seed)
    order = list(range(len(items)))
    rng.shuffle(order)
    shuffled = [items[i] for i in order]
    if valset is not None:
        val = list(valset)
        val_keys = {_input_key(v) for v in val}
        train = [ex for ex in shuffled if _input_key(ex) not in val_keys]
        if len(train) < len(shuffled):
            log.warning(
                "dropped %d training example(s) whose input is also in valset", len(shuffled) - len(train)
            )
    else:
        if len(items) < 2:
            raise ConfigurationError(
                "optimize needs at least 2 examples (one to train on, one to validate on), or valset=..."
            )
        n_val = min(len(items) - 1, max(1, round(len(items) * (1.0 - train_split))))
        train, val = shuffled[: len(items) - n_val], shuffled[len(items) - n_val:]
    if max_val is not None:
        val = val[:max_val]
    if not train:
        raise ConfigurationError("the training split is empty")
    if not val:
        raise ConfigurationError("the validation split is empty")
    return Split(train=train, val=val)


def plain_demos(prompter: Prompter, state: PromptState, train: Sequence[Example], k: int) -> PromptState:
    """The baseline's demos: the current ones, topped up to ``k`` with the first labelled training
    examples as plain (input, label) demos."""
    demos = list(state.demos)
    if len(demos) >= k:
        return state
    have = {repr(d.input) for d in demos}
    for ex in train:
        if len(demos) >= k:
            break
        expected = ex.expected_dict()
        if expected is None:
            continue
        content = prompter._input(ex).as_content()
        if repr(content) in have:
            continue
        have.add(repr(content))
        demos.append(Demo(input=content, output=normalized_output(prompter, expected)))
    return state.replace(demos=demos)
