"""``ExtractionStore``: extraction results in a SQL database (SQLAlchemy 2), a review queue, and the loop
back into ``optimize()``.

    store = ExtractionStore("sqlite:///extractions.db")          # or "postgresql+psycopg://user@host/db"
    docs = store.process(prompter, texts)                        # idempotent; safe under concurrent workers
    for doc in store.pending(): ...                              # low confidence, or failed
    store.approve(doc.id); store.correct(doc.id, {"total": 12.5})
    prompter.optimize(store.examples(name="Invoice"))            # approved + corrected results as Examples

A document's id is sha256 of the prompter's fingerprint and the input's digest (see ``_identity``), the
same in every process: processing an input twice with the same prompter makes one row and one LM call. Rows
are claimed before the LM is called (``INSERT ... ON CONFLICT DO NOTHING``: one claimer wins); a result is
written only by its claimer (``UPDATE ... WHERE status='processing' AND claim_token=...``), so it is written
once even when several processes race or a worker dies and its task is redelivered. A claim older than
``lease_seconds`` (its worker died) is taken over by the next caller.

Size: just over 500 lines: the claim/lease protocol, the review queue and the export back into ``optimize()``
share one table and its transactions (the table and the row codec are already ``_store_*``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._fanout import fan_out
from ..errors import ConfigurationError, LMError, MissingExtraError, PersistenceError

try:
    import sqlalchemy as sa
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("db", "sqlalchemy") from exc

from ._identity import (
    PreparedInput,
    document_key,
    example_from_record,
    prepare_input,
    prompter_fingerprint,
    prompter_lm,
)
from ._store_documents import StoredDocument, from_row, usage_json, write_jsonl, write_parquet
from ._store_tables import (
    APPROVED,
    CORRECTED,
    DONE,
    FAILED,
    PROCESSING,
    QUEUED,
    REVIEW,
    REVIEWED,
    STATUSES,
    Tables,
    add_missing_columns,
    as_utc,
    insert_ignore,
    utcnow,
)

if TYPE_CHECKING:
    import datetime as dt

    from .._example import Example
    from .._prompter import Prompter
    from .._result import ExtractionResult

__all__ = ["ExtractionStore", "StoredDocument"]

log = logging.getLogger("dspydantic.store")


class ExtractionStore:
    """Extraction results in a database (``url``: any SQLAlchemy URL; SQLite and PostgreSQL are tested).

    * ``review_below``: results with a field under it are queued for review (with per-field confidences:
      any field — or any of ``review_fields`` — below the number; else the overall ``confidence``). A map
      of field paths to numbers gives each field its own threshold (``{"total": 0.9, "*": 0.6}``; see
      :func:`dspydantic.integrations.thresholds.fields_below`). Failed extractions are queued too. A stored
      result keeps its per-field confidences, grounded spans and ungrounded fields.
    * ``table_prefix``: the tables are ``<prefix>documents`` and ``<prefix>batch_jobs`` (created when
      missing).
    * ``lease_seconds``: a claim older than this is taken to belong to a dead worker and is taken over.
    """

    def __init__(
        self,
        url: str = "sqlite:///extractions.db",
        *,
        review_below: float | Mapping[str, float] = 0.8,
        review_fields: Sequence[str] | None = None,
        table_prefix: str = "dspydantic_",
        lease_seconds: float = 600.0,
        poll_interval: float = 0.1,
        create_tables: bool = True,
        **engine_kwargs: Any,
    ) -> None:
        try:
            self._url = sa.engine.make_url(url)
        except (sa.exc.ArgumentError, ValueError, TypeError) as exc:
            raise ConfigurationError(f"not a database URL: {exc}") from None
        if not table_prefix.replace("_", "").isalnum():
            raise ConfigurationError(f"table_prefix must be letters, digits and '_', got {table_prefix!r}")
        from .thresholds import check_threshold

        self.review_below = check_threshold(review_below, what="review_below")
        self.review_fields = tuple(review_fields or ())
        self.lease_seconds = float(lease_seconds)
        self.poll_interval = float(poll_interval)
        self._tables = Tables(table_prefix)
        self._engine_kwargs = engine_kwargs
        self._engine: sa.Engine | None = None
        self._pid = 0
        self._lock = threading.Lock()
        if create_tables:
            self.create_tables()

    def __repr__(self) -> str:
        return f"ExtractionStore({self.url!r})"

    @property
    def url(self) -> str:
        """The database URL with its password hidden."""
        return self._url.render_as_string(hide_password=True)

    # -- connections (one engine per process: an engine must not cross a fork) ---------------------
    @property
    def engine(self) -> sa.Engine:
        with self._lock:
            if self._engine is None or self._pid != os.getpid():
                if self._engine is not None:
                    self._engine.dispose(close=False)  # the parent's connections stay the parent's
                self._engine = self._create_engine()
                self._pid = os.getpid()
            return self._engine

    def _create_engine(self) -> sa.Engine:
        kwargs = dict(self._engine_kwargs)
        if self._url.get_backend_name() == "sqlite":
            connect_args = {"timeout": 60.0, "check_same_thread": False, **kwargs.pop("connect_args", {})}
            if self._url.database in (None, "", ":memory:"):
                kwargs.setdefault("poolclass", sa.pool.StaticPool)  # one in-memory database for every thread
            kwargs["connect_args"] = connect_args
        try:
            engine = sa.create_engine(self._url, **kwargs)
        except (ImportError, sa.exc.NoSuchModuleError) as exc:
            raise ConfigurationError(
                f"cannot open {self.url}: {exc} (install the database driver, e.g. "
                "pip install 'psycopg[binary]' for postgresql+psycopg://)"
            ) from None
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    def create_tables(self) -> None:
        """Create the store's tables where missing, and add the columns a database made by an older release
        lacks (additive: existing rows keep their values; several processes may call this at once)."""
        for attempt in range(5):
            try:
                self._tables.metadata.create_all(self.engine, checkfirst=True)
                added = add_missing_columns(self.engine, self._tables.documents)
                if added:
                    log.info("store %s: added column(s) %s", self.url, ", ".join(added))
                return
            except sa.exc.DBAPIError as exc:  # a concurrent CREATE TABLE won the race: look again
                if attempt == 4:
                    raise PersistenceError(f"cannot open the store at {self.url}: {exc.orig}") from None
                time.sleep(0.05 * (attempt + 1))

    def close(self) -> None:
        with self._lock:
            if self._engine is not None and self._pid == os.getpid():
                self._engine.dispose()
            self._engine = None

    def __enter__(self) -> ExtractionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- processing ---------------------------------------------------------------------------------
    def process(
        self,
        prompter: Prompter,
        inputs: Iterable[Any],
        *,
        name: str | None = None,
        max_workers: int = 4,
        retry_failed: bool = False,
        wait: bool = True,
        claim_token: str | None = None,
        retry_transient: bool = False,
    ) -> list[StoredDocument]:
        """Extract every input not stored yet for this prompter, store the results, and return the stored
        documents in input order (already-stored ones make no LM call).

        Inputs are what ``predict_batch`` takes (str, template dict, dict of input keywords, Example).
        ``name`` labels the prompter (default: its model's class name). A failed extraction is stored as
        ``failed`` (and queued for review); ``retry_failed=True`` extracts such documents again. An input
        another process is extracting right now is waited for (``wait=False`` returns it as
        ``processing``). ``claim_token`` identifies this caller's claims (a redelivered Celery task passes
        its task id, so it takes back the claim of its dead first delivery). With ``retry_transient`` a
        transient LM error (``LMError.retryable``) is raised instead of stored, keeping the claim, so that a
        retry with the same ``claim_token`` extracts the document again (every other input is stored).
        """
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigurationError(f"max_workers must be a positive int, got {max_workers!r}")
        prepared = [prepare_input(item) for item in inputs]  # bad inputs fail here, before any LM call
        name = name or prompter.model.__name__
        fingerprint = prompter_fingerprint(prompter)
        token = claim_token or uuid.uuid4().hex
        keys = [document_key(fingerprint, p.digest) for p in prepared]
        unique = dict(zip(keys, prepared, strict=True))
        meta = {"prompter_name": name, "prompter_version": fingerprint[:12], "prompter_fingerprint": fingerprint,
                "lm": prompter_lm(prompter)}
        mine = [k for k, p in unique.items() if self._claim(k, p, meta, token, retry_failed)]
        self._extract(prompter, {k: unique[k] for k in mine}, token, max_workers, retry_transient)
        if wait:
            busy = [k for k in unique if k not in mine]
            while busy:
                taken = self._wait(busy, token)
                self._extract(prompter, {k: unique[k] for k in taken}, token, max_workers, retry_transient)
                busy = [k for k in busy if k not in taken and self._status(k) == PROCESSING]
        docs = self._get_many(list(unique))
        return [docs[k] for k in keys]

    def put(
        self,
        prompter: Prompter,
        item: Any,
        outcome: ExtractionResult[Any] | BaseException,
        *,
        name: str | None = None,
    ) -> StoredDocument:
        """Store the outcome of an extraction made elsewhere (the HTTP service records its answers so), under
        the same id :meth:`process` gives the input: written once. When the document is stored already, the
        stored row is kept (a failed one is replaced by a result) and returned."""
        prep = prepare_input(item)
        name = name or prompter.model.__name__
        fingerprint = prompter_fingerprint(prompter)
        key = document_key(fingerprint, prep.digest)
        meta = {"prompter_name": name, "prompter_version": fingerprint[:12], "prompter_fingerprint": fingerprint,
                "lm": prompter_lm(prompter)}
        token = uuid.uuid4().hex
        if self._claim(key, prep, meta, token, retry_failed=not isinstance(outcome, BaseException)):
            self.record(key, token, outcome)
        doc = self.get(key)
        assert doc is not None  # claimed, or stored by someone else
        return doc

    def _claim(self, key: str, prep: PreparedInput, meta: dict[str, Any], token: str, retry_failed: bool) -> bool:
        """Make this caller the one extracting ``key``; False when it is stored or someone else has it."""
        docs = self._tables.documents
        now = utcnow()
        row = {"id": key, "input_sha256": prep.digest, "input": prep.record, "status": PROCESSING,
               "claim_token": token, "claimed_at": now, "created_at": now, "updated_at": now, **meta}
        with self.engine.begin() as conn:
            if insert_ignore(conn, docs, row):
                return True
        with self.engine.connect() as conn:
            current = conn.execute(
                sa.select(docs.c.status, docs.c.claim_token, docs.c.claimed_at).where(docs.c.id == key)
            ).one_or_none()
        if current is None:  # deleted in between: try once more
            return self._claim(key, prep, meta, token, retry_failed)
        status, owner, claimed_at = current
        takeover = sa.update(docs).where(docs.c.id == key).values(claim_token=token, claimed_at=now, updated_at=now)
        if status == PROCESSING and owner == token:
            return True  # our own claim (a redelivered task)
        if status == PROCESSING and as_utc(claimed_at) is not None and self._expired(as_utc(claimed_at)):
            stmt = takeover.where(docs.c.status == PROCESSING, docs.c.claim_token == owner)
        elif status == FAILED and retry_failed:
            stmt = takeover.values(status=PROCESSING).where(docs.c.status == FAILED)
        else:
            return False
        with self.engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount == 1)

    def _expired(self, claimed_at: dt.datetime | None) -> bool:
        return claimed_at is None or (utcnow() - claimed_at).total_seconds() > self.lease_seconds

    def _wait(self, keys: list[str], token: str) -> list[str]:
        """Wait until another caller finishes ``keys``; returns those whose claim expired and became ours."""
        docs = self._tables.documents
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(docs.c.id, docs.c.claim_token, docs.c.claimed_at)
                    .where(docs.c.id.in_(keys), docs.c.status == PROCESSING)
                ).all()
            if not rows:
                return []
            taken = []
            for key, owner, claimed_at in rows:
                if self._expired(as_utc(claimed_at)):
                    stmt = (sa.update(docs)
                            .where(docs.c.id == key, docs.c.status == PROCESSING, docs.c.claim_token == owner)
                            .values(claim_token=token, claimed_at=utcnow(), updated_at=utcnow()))
                    with self.engine.begin() as conn:
                        if conn.execute(stmt).rowcount == 1:
                            taken.append(key)
            if taken:
                return taken
            time.sleep(self.poll_interval)

    def _extract(
        self, prompter: Prompter, claimed: dict[str, PreparedInput], token: str, workers: int, retry_transient: bool
    ) -> None:
        if not claimed:
            return

        def one(key: str) -> None:
            outcome = prompter.predict_batch([claimed[key].doc], with_confidence=True, on_error="return")[0]
            if retry_transient and isinstance(outcome, LMError) and outcome.retryable:
                raise outcome  # the claim stays ours: a retry with the same token takes it back
            self.record(key, token, outcome)

        fan_out(one, claimed, workers)

    def record(self, key: str, token: str, outcome: ExtractionResult[Any] | BaseException) -> bool:
        """Write the outcome of a claimed extraction; True when written (only the claim's holder writes,
        once). A low-level step of :meth:`process`, used by the Celery tasks."""
        docs = self._tables.documents
        now = utcnow()
        values: dict[str, Any] = {"updated_at": now, "extracted_at": now}
        if isinstance(outcome, BaseException):
            usage = getattr(outcome, "usage", None)
            values.update(status=FAILED, error_type=type(outcome).__name__, error=str(outcome),
                          usage=usage_json(usage) if usage is not None else {},
                          attempts=getattr(outcome, "attempts", None))
        else:
            from pydantic_core import to_jsonable_python

            values.update(
                status=self._route(outcome),
                data=outcome.data.model_dump(mode="json", by_alias=True),
                confidence=float(outcome.confidence),
                field_confidences={k: float(v) for k, v in outcome.field_confidences.items()},
                spans=to_jsonable_python(outcome.spans),
                ungrounded=list(outcome.ungrounded),
                usage=usage_json(outcome.usage),
                attempts=outcome.attempts,
                error_type=None,
                error=None,
            )
        stmt = (sa.update(docs).where(docs.c.id == key, docs.c.status == PROCESSING, docs.c.claim_token == token)
                .values(**values))
        with self.engine.begin() as conn:
            written = conn.execute(stmt).rowcount == 1
        if not written:
            log.info("document %s was finished by another worker; its stored result is kept", key[:12])
        return written

    def _route(self, result: ExtractionResult[Any]) -> str:
        from .thresholds import fields_below

        return REVIEW if fields_below(result, self.review_below, self.review_fields) else DONE

    # -- reading ------------------------------------------------------------------------------------
    def get(self, doc_id: str) -> StoredDocument | None:
        return self._get_many([doc_id]).get(doc_id)

    def _get_many(self, ids: list[str]) -> dict[str, StoredDocument]:
        docs = self._tables.documents
        out: dict[str, StoredDocument] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                rows = conn.execute(sa.select(docs).where(docs.c.id.in_(ids[start:start + 500]))).mappings()
                out.update((r["id"], from_row(r)) for r in rows)
        return out

    def find_ids(self, prefix: str, limit: int = 2) -> list[str]:
        """Ids starting with ``prefix`` (at most ``limit``): short ids, as a reviewer types them."""
        prefix = prefix.strip().lower()
        if not prefix or any(c not in "0123456789abcdef" for c in prefix):
            return []
        docs = self._tables.documents
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(docs.c.id).where(docs.c.id.startswith(prefix)).limit(limit)).scalars())

    def _status(self, doc_id: str) -> str | None:
        docs = self._tables.documents
        with self.engine.connect() as conn:
            return conn.execute(sa.select(docs.c.status).where(docs.c.id == doc_id)).scalar_one_or_none()

    def documents(
        self, *, status: str | Sequence[str] | None = None, name: str | None = None, limit: int | None = None
    ) -> list[StoredDocument]:
        """Stored documents, oldest first, optionally filtered by status(es) and prompter name."""
        return list(self._iter(status=status, name=name, limit=limit))

    def _iter(
        self, *, status: str | Sequence[str] | None = None, name: str | None = None, limit: int | None = None,
        order: Any = None,
    ) -> Iterator[StoredDocument]:
        docs = self._tables.documents
        stmt = sa.select(docs)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            unknown = set(wanted) - set(STATUSES)
            if unknown:
                raise ConfigurationError(f"unknown status {sorted(unknown)}; statuses are {list(STATUSES)}")
            stmt = stmt.where(docs.c.status.in_(wanted))
        if name is not None:
            stmt = stmt.where(docs.c.prompter_name == name)
        stmt = stmt.order_by(*(order or (docs.c.created_at, docs.c.id)))
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            for row in conn.execute(stmt).mappings():
                yield from_row(row)

    def counts(self, name: str | None = None) -> dict[str, int]:
        """Number of documents per status."""
        docs = self._tables.documents
        stmt = sa.select(docs.c.status, sa.func.count()).group_by(docs.c.status)
        if name is not None:
            stmt = stmt.where(docs.c.prompter_name == name)
        with self.engine.connect() as conn:
            found = {str(s): int(n) for s, n in conn.execute(stmt).all()}
        return {s: found.get(s, 0) for s in STATUSES}

    # -- review -------------------------------------------------------------------------------------
    def pending(self, *, name: str | None = None, limit: int | None = None) -> list[StoredDocument]:
        """The review queue: results under the confidence threshold, and failed extractions."""
        return self.documents(status=QUEUED, name=name, limit=limit)

    def approve(self, doc_id: str) -> StoredDocument:
        """A reviewer confirms the extracted data: the document becomes a labelled example."""
        return self._review(doc_id, "approve", (DONE, REVIEW, APPROVED), status=APPROVED, corrected_data=None)

    def correct(self, doc_id: str, data: Mapping[str, Any] | Any) -> StoredDocument:
        """A reviewer gives the right data (a dict or a model instance): it becomes the example's label."""
        from pydantic import BaseModel

        if isinstance(data, BaseModel):
            data = data.model_dump(mode="json", by_alias=True)
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"a correction must be a dict of the model's fields, got {type(data).__name__}")
        from pydantic_core import to_jsonable_python

        allowed = (DONE, REVIEW, FAILED, APPROVED, CORRECTED)
        return self._review(doc_id, "correct", allowed, status=CORRECTED, corrected_data=to_jsonable_python(dict(data)))

    def _review(self, doc_id: str, verb: str, allowed: tuple[str, ...], **values: Any) -> StoredDocument:
        docs = self._tables.documents
        now = utcnow()
        stmt = (sa.update(docs).where(docs.c.id == doc_id, docs.c.status.in_(allowed))
                .values(reviewed_at=now, updated_at=now, **values))
        with self.engine.begin() as conn:
            changed = conn.execute(stmt).rowcount == 1
        doc = self.get(doc_id)
        if doc is None:
            raise ConfigurationError(f"no document with id {doc_id!r} in {self.url}")
        if not changed:
            why = {
                PROCESSING: "it is being extracted right now",
                FAILED: "its extraction failed, so there is no data to approve: correct() it instead",
                CORRECTED: "it was corrected already: correct() it again to change the label",
            }.get(doc.status, f"its status is {doc.status!r}")
            raise ConfigurationError(f"cannot {verb} document {doc_id!r}: {why}")
        return doc

    def examples(self, *, name: str | None = None) -> list[Example]:
        """Approved and corrected results as ``Example``s (the correction when there is one), one per input
        and prompter name (the latest review wins), for ``prompter.optimize(store.examples(...))``."""
        docs = self._tables.documents
        latest: dict[tuple[str, str], StoredDocument] = {}
        for doc in self._iter(status=REVIEWED, name=name, order=(docs.c.reviewed_at, docs.c.id)):
            latest[(doc.prompter_name, doc.input_sha256)] = doc
        out: list[Example] = []
        for doc in latest.values():
            example = example_from_record(doc.input, doc.label)
            if example is None:
                log.warning("document %s was given as bytes and its input is not kept: not an example", doc.id[:12])
                continue
            out.append(example)
        return out

    # -- export -------------------------------------------------------------------------------------
    def export(
        self, path: str | os.PathLike[str], *, status: str | Sequence[str] | None = None, name: str | None = None
    ) -> int:
        """Write the documents to ``path`` (``.jsonl``, or ``.parquet`` with pyarrow installed); returns
        how many. The file is replaced atomically."""
        target = Path(path)
        kind = target.suffix.lower()
        if kind not in (".jsonl", ".parquet"):
            raise ConfigurationError(f"export writes .jsonl or .parquet files, not {target.name!r}")
        rows = [d.to_json() for d in self._iter(status=status, name=name)]
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            (write_jsonl if kind == ".jsonl" else write_parquet)(tmp, rows)
            os.replace(tmp, target)
        except OSError as exc:
            raise PersistenceError(f"cannot write {str(target)!r}: {exc}") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        return len(rows)

    # -- batch-job records (the ``store=`` of provider batch jobs) -----------------------------------
    def save_batch_job(self, job_id: str, record: dict[str, Any]) -> None:
        """Insert or replace the record of one batch job."""
        from pydantic_core import to_jsonable_python

        if not isinstance(job_id, str) or not job_id:
            raise ConfigurationError(f"job_id must be a non-empty str, got {job_id!r}")
        table = self._tables.batch_jobs
        now = utcnow()
        value = to_jsonable_python(record)
        with self.engine.begin() as conn:
            if insert_ignore(conn, table, {"job_id": job_id, "record": value, "created_at": now, "updated_at": now}):
                return
            conn.execute(sa.update(table).where(table.c.job_id == job_id).values(record=value, updated_at=now))

    def load_batch_job(self, job_id: str) -> dict[str, Any] | None:
        table = self._tables.batch_jobs
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(table.c.record).where(table.c.job_id == job_id)).scalar_one_or_none()
        return dict(value) if value is not None else None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer (several worker processes)
        cur.execute("PRAGMA busy_timeout=60000")
    finally:
        cur.close()
