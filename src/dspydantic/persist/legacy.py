"""Directories written by dspydantic 0.1.x: ``dspydantic_metadata.json``, ``optimized_state.json`` and
``model_schema.json``, read into the same :class:`~dspydantic.persist.format.SavedPrompter` as our format."""

from __future__ import annotations

import warnings
from typing import Any

from .._media import data_url, decode_base64, sniff_image_mime
from .._render import Demo, PromptState
from .._schema import _strip_titles, inline_schema, legacy_path, legacy_paths
from ..errors import ConfigurationError, PersistenceError
from .files import SavedDir, check_schema, expect, read_json
from .saved import SavedPrompter, sanitize_api_base

__all__ = ["LEGACY_METADATA", "LEGACY_SCHEMA", "LEGACY_STATE", "legacy_demo", "legacy_paths", "read_legacy"]

LEGACY_METADATA = "dspydantic_metadata.json"
LEGACY_STATE = "optimized_state.json"
LEGACY_SCHEMA = "model_schema.json"


def legacy_demo(raw: Any) -> Demo | None:
    if not isinstance(raw, dict):
        return None
    inp: dict[str, Any] = raw["input_data"] if isinstance(raw.get("input_data"), dict) else {}
    out = raw.get("expected_output")
    if isinstance(out, str):
        out = {"output": out}
    if not isinstance(out, dict):
        return None  # an unlabelled example cannot be shown as a demonstration
    text = inp.get("text")
    images = inp.get("images") if isinstance(inp.get("images"), list) else []
    if not images:
        return Demo(input=str(text), output=out) if isinstance(text, str) and text else None
    parts: list[dict[str, Any]] = []
    if isinstance(text, str) and text:
        parts.append({"type": "text", "text": text})
    for img in images:
        if not isinstance(img, str):
            continue
        if img.startswith("data:"):
            url = img
        else:
            try:
                blob, _ = decode_base64(img, "a 0.1 demo image")
            except ConfigurationError:
                continue
            url = data_url(blob, sniff_image_mime(blob) or "image/png")
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return Demo(input=parts, output=out) if parts else None


def read_legacy(saved_dir: SavedDir) -> SavedPrompter:
    directory = saved_dir.path
    meta = read_json(saved_dir, LEGACY_METADATA, what="the 0.1.x metadata")
    expect(isinstance(meta, dict), directory, LEGACY_METADATA, "not a JSON object")
    version = str(meta.get("version") or "0")
    if not version.startswith("0."):
        raise PersistenceError(
            f"{str(directory / LEGACY_METADATA)!r} says dspydantic {version}; this dspydantic reads saves of "
            "0.1.x and its own format. Save the prompter again with the dspydantic it was made with, or upgrade."
        )
    state = read_json(saved_dir, LEGACY_STATE, what="the 0.1.x optimized state")
    expect(isinstance(state, dict), directory, LEGACY_STATE, "not a JSON object")
    raw_schema = read_json(saved_dir, LEGACY_SCHEMA, what="the 0.1.x model schema")
    raw_schema = check_schema(directory, LEGACY_SCHEMA, raw_schema)
    schema = _strip_titles(inline_schema(raw_schema))
    name = str(raw_schema.get("title") or "Model")
    if not name.isidentifier() or len(name) > 200:
        name = "Model"

    paths = legacy_paths(schema)
    descriptions: dict[str, str] = {}
    raw_desc = state.get("optimized_descriptions") or {}
    expect(isinstance(raw_desc, dict), directory, LEGACY_STATE, "optimized_descriptions is not an object")
    for old, desc in raw_desc.items():
        path = paths.get(str(old))
        if path is None or not isinstance(desc, str):
            continue
        if desc == legacy_path(path.rsplit(".", 1)[-1]):
            continue  # 0.1.x wrote the field name where a field had no description
        descriptions[path] = desc
    demos = [d for d in (legacy_demo(x) for x in state.get("optimized_demos") or []) if d is not None]

    def text(key: str) -> str | None:
        value = state.get(key)
        return value if isinstance(value, str) and value else None

    config: dict[str, Any] = meta["model_config"] if isinstance(meta.get("model_config"), dict) else {}
    if "api_key" in config:
        warnings.warn(
            f"{str(directory / LEGACY_METADATA)!r} contains an api_key; it is ignored (pass api_key= to "
            "load()). Remove it from the file: keys do not belong in saved prompters.",
            UserWarning,
            stacklevel=5,
        )
    current = PromptState(
        system_prompt=text("optimized_system_prompt"),
        instruction_prompt=text("optimized_instruction_prompt"),
        field_descriptions=descriptions,
        demos=tuple(demos),
    )
    free_text = set(schema.get("properties", {})) == {"output"} and name in ("OutputModel", "Output")
    return SavedPrompter(
        path=directory,
        model_name=name,
        schema=schema,
        free_text=free_text,
        model_id=str(meta.get("model_id") or "") or None,
        api_base=sanitize_api_base(config.get("api_base")),
        original=PromptState(),
        current=current,
        library_version=version,
        legacy=True,
    )


