"""What a stored document is (``StoredDocument``), read from its row, and written out (JSON lines, Parquet)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DspydanticError, MissingExtraError
from ._store_tables import as_utc

__all__ = ["StoredDocument", "error_from_document", "from_row", "usage_json", "write_jsonl", "write_parquet"]


@dataclass(frozen=True)
class StoredDocument:
    """One row of the store. ``label`` is what a reviewer vouched for (the correction, else the data)."""

    id: str
    status: str
    prompter_name: str
    prompter_version: str
    lm: str | None
    input: dict[str, Any]
    data: dict[str, Any] | None
    corrected_data: dict[str, Any] | None
    confidence: float | None
    field_confidences: dict[str, float] = field(default_factory=dict)
    spans: dict[str, Any] = field(default_factory=dict)
    ungrounded: list[str] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    attempts: int | None = None
    error_type: str | None = None
    error: str | None = None
    input_sha256: str = ""
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
    extracted_at: dt.datetime | None = None
    reviewed_at: dt.datetime | None = None

    @property
    def label(self) -> dict[str, Any] | None:
        return self.corrected_data if self.corrected_data is not None else self.data

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            out[name] = value.isoformat() if hasattr(value, "isoformat") else value
        out["label"] = self.label
        return out


def usage_json(usage: Any) -> dict[str, int]:
    return {k: int(getattr(usage, k, 0) or 0) for k in ("calls", "prompt_tokens", "completion_tokens", "cache_hits")}


def from_row(row: Any) -> StoredDocument:
    return StoredDocument(
        id=row["id"],
        status=row["status"],
        prompter_name=row["prompter_name"],
        prompter_version=row["prompter_version"],
        lm=row["lm"],
        input=dict(row["input"] or {}),
        data=row["data"],
        corrected_data=row["corrected_data"],
        confidence=row["confidence"],
        field_confidences=dict(row["field_confidences"] or {}),
        spans=dict(row["spans"] or {}),
        ungrounded=list(row.get("ungrounded") or []),
        usage=dict(row["usage"] or {}),
        attempts=row["attempts"],
        error_type=row["error_type"],
        error=row["error"],
        input_sha256=row["input_sha256"],
        created_at=as_utc(row["created_at"]),
        updated_at=as_utc(row["updated_at"]),
        extracted_at=as_utc(row["extracted_at"]),
        reviewed_at=as_utc(row["reviewed_at"]),
    )


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingExtraError("db", "pyarrow") from None
    nested = ("input", "data", "corrected_data", "label", "field_confidences", "spans", "ungrounded", "usage")
    names = list(rows[0]) if rows else [*StoredDocument.__dataclass_fields__, "label"]
    columns: dict[str, list[Any]] = {k: [] for k in names}
    for row in rows:
        for key in columns:
            value = row.get(key)
            columns[key].append(json.dumps(value, ensure_ascii=False) if key in nested else value)
    pq.write_table(pa.table(columns), str(path))


def error_from_document(doc: StoredDocument) -> DspydanticError:
    """The typed error a failed document holds (the class by name; its message as stored)."""
    from .. import errors

    cls = getattr(errors, doc.error_type or "", None)
    message = doc.error or "the extraction failed"
    if isinstance(cls, type) and issubclass(cls, DspydanticError) and cls is not errors.MissingExtraError:
        try:
            return cls(message)
        except TypeError:
            pass
    return DspydanticError(message)
