"""GEPA's candidates: named texts (field descriptions, system and instruction prompts) and how they apply to a state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._render import DEFAULT_INSTRUCTION_PROMPT, DEFAULT_SYSTEM_PROMPT, PromptState
from .._schema import iter_field_paths
from .field_evaluators import path_segments

__all__ = [
    "FIELD",
    "INSTRUCTION",
    "PROMPTS",
    "SYSTEM",
    "apply_candidate",
    "field_components",
    "field_groups",
    "related",
    "seed_candidate",
]

FIELD = "field:"
SYSTEM = "system_prompt"
INSTRUCTION = "instruction_prompt"
PROMPTS = (SYSTEM, INSTRUCTION)


def related(component_path: str, scored_path: str) -> bool:
    """A scored leaf lies below the field (or the field below a scored dict leaf)."""
    a, b = path_segments(component_path), path_segments(scored_path)
    return b[: len(a)] == a or a[: len(b)] == b


def field_components(schema: dict[str, Any], include: Sequence[str] | None, exclude: Sequence[str] | None) -> list[str]:
    """Every field path that is scored (after ``include_fields``/``exclude_fields``), parents first."""
    out = []
    for f in iter_field_paths(schema):
        seg = path_segments(f.path)
        if exclude and any(seg[: len(path_segments(p))] == path_segments(p) for p in exclude):
            continue
        if include and not any(
            seg[: len(path_segments(p))] == path_segments(p) or path_segments(p)[: len(seg)] == seg for p in include
        ):
            continue
        out.append(f.path)
    return out


def seed_candidate(
    descriptions: Mapping[str, str], state: PromptState, paths: Sequence[str], prompts: Sequence[str]
) -> dict[str, str]:
    cand = {FIELD + p: descriptions.get(p, "") for p in paths}
    if SYSTEM in prompts:
        cand[SYSTEM] = state.system_prompt or DEFAULT_SYSTEM_PROMPT
    if INSTRUCTION in prompts:
        cand[INSTRUCTION] = state.instruction_prompt or DEFAULT_INSTRUCTION_PROMPT
    return cand


def apply_candidate(state: PromptState, candidate: Mapping[str, str], descriptions: Mapping[str, str]) -> PromptState:
    """``state`` with the candidate's texts (a description equal to the current one is not stored)."""
    fd = dict(state.field_descriptions)
    for name, text in candidate.items():
        if name.startswith(FIELD):
            path = name[len(FIELD):]
            if text != descriptions.get(path, "") or path in fd:
                fd[path] = text
    changes: dict[str, Any] = {"field_descriptions": fd}
    if SYSTEM in candidate:
        s = candidate[SYSTEM]
        changes["system_prompt"] = None if s == DEFAULT_SYSTEM_PROMPT and state.system_prompt is None else s
    if INSTRUCTION in candidate:
        s = candidate[INSTRUCTION]
        changes["instruction_prompt"] = (
            None if s == DEFAULT_INSTRUCTION_PROMPT and state.instruction_prompt is None else s
        )
    return state.replace(**changes)


def field_groups(paths: Sequence[str], parallel_fields: bool) -> list[list[str]]:
    """Sequential mode: deepest fields first; one group per depth (``parallel_fields``) or per field."""
    by_depth: dict[int, list[str]] = {}
    for p in paths:
        by_depth.setdefault(len(path_segments(p)), []).append(p)
    groups: list[list[str]] = []
    for depth in sorted(by_depth, reverse=True):
        if parallel_fields:
            groups.append(by_depth[depth])
        else:
            groups.extend([p] for p in by_depth[depth])
    return groups
