"""The ExtractionStore's tables (SQLAlchemy Core), and the one database-specific statement it needs:
an insert that does nothing when the key exists."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

#: a document's life: claimed by a worker -> extracted (done / queued for review / failed) -> reviewed
PROCESSING, DONE, REVIEW, FAILED, APPROVED, CORRECTED = (
    "processing", "done", "review", "failed", "approved", "corrected",
)
STATUSES = (PROCESSING, DONE, REVIEW, FAILED, APPROVED, CORRECTED)
#: results a reviewer has vouched for: these become Examples
REVIEWED = (APPROVED, CORRECTED)
#: the review queue
QUEUED = (REVIEW, FAILED)

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes: they were written in UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=dt.UTC)


class Tables:
    """``documents`` and ``batch_jobs``, named ``<prefix>documents`` / ``<prefix>batch_jobs``."""

    def __init__(self, prefix: str) -> None:
        self.metadata = sa.MetaData()
        ts = sa.DateTime(timezone=True)
        self.documents = sa.Table(
            f"{prefix}documents",
            self.metadata,
            # sha256(prompter fingerprint, input digest): the same document and prompter -> the same row
            sa.Column("id", sa.String(64), primary_key=True),
            sa.Column("input_sha256", sa.String(64), nullable=False, index=True),
            sa.Column("prompter_name", sa.String(200), nullable=False, index=True),
            sa.Column("prompter_version", sa.String(64), nullable=False),
            sa.Column("prompter_fingerprint", sa.String(64), nullable=False),
            sa.Column("lm", sa.String(300)),
            sa.Column("input", _JSON),
            sa.Column("status", sa.String(16), nullable=False, index=True),
            sa.Column("data", _JSON),
            sa.Column("corrected_data", _JSON),
            sa.Column("confidence", sa.Float),
            sa.Column("field_confidences", _JSON),
            sa.Column("spans", _JSON),
            sa.Column("ungrounded", _JSON),  # added after the first release: see ``add_missing_columns``
            sa.Column("usage", _JSON),
            sa.Column("attempts", sa.Integer),
            sa.Column("error_type", sa.String(100)),
            sa.Column("error", sa.Text),
            # who is extracting it now (a worker's claim; a Celery task id), and since when
            sa.Column("claim_token", sa.String(100)),
            sa.Column("claimed_at", ts),
            sa.Column("created_at", ts, nullable=False),
            sa.Column("updated_at", ts, nullable=False),
            sa.Column("extracted_at", ts),
            sa.Column("reviewed_at", ts),
        )
        self.batch_jobs = sa.Table(
            f"{prefix}batch_jobs",
            self.metadata,
            sa.Column("job_id", sa.String(255), primary_key=True),
            sa.Column("record", _JSON, nullable=False),
            sa.Column("created_at", ts, nullable=False),
            sa.Column("updated_at", ts, nullable=False),
        )


def add_missing_columns(engine: sa.Engine, table: sa.Table) -> list[str]:
    """Additive migration: ``ALTER TABLE ... ADD COLUMN`` for each nullable column of ``table`` that a
    database created by an older release lacks (existing rows read NULL there). Returns the added names;
    a concurrent process adding the same column is not an error."""
    present = {c["name"] for c in sa.inspect(engine).get_columns(table.name)}
    added = []
    for column in table.columns:
        if column.name in present:
            continue
        if not column.nullable:  # not something an older database can get without a default
            raise sa.exc.InvalidRequestError(f"{table.name} lacks the required column {column.name!r}")
        preparer = engine.dialect.identifier_preparer
        ddl = (f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {preparer.format_column(column)} "
               f"{column.type.compile(dialect=engine.dialect)}")
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(ddl))
        except sa.exc.DBAPIError:
            if column.name not in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
                raise
        added.append(column.name)
    return added


def insert_ignore(conn: sa.Connection, table: sa.Table, values: dict[str, Any]) -> bool:
    """Insert ``values`` unless the primary key exists; True when this call inserted the row.

    One statement on PostgreSQL and SQLite (``ON CONFLICT DO NOTHING``): concurrent callers never fail and
    exactly one of them inserts. Elsewhere a plain insert whose unique-key violation means "exists".
    """
    name = conn.dialect.name
    stmt: Any
    if name == "postgresql":
        stmt = postgresql.insert(table).values(**values).on_conflict_do_nothing()
    elif name == "sqlite":
        from sqlalchemy.dialects import sqlite

        stmt = sqlite.insert(table).values(**values).on_conflict_do_nothing()
    else:
        try:
            with conn.begin_nested():
                conn.execute(table.insert().values(**values))
        except sa.exc.IntegrityError:
            return False
        return True
    return bool(conn.execute(stmt).rowcount == 1)
