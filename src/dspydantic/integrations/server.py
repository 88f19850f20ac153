"""The HTTP service: saved prompters served side by side by name (FastAPI + uvicorn, the ``[server]`` extra).

    from dspydantic.server import create_app
    app = create_app({"invoice": "./invoice_prompter", "receipt": receipt_prompter})

Routes: ``POST /extract/{name}`` (and ``POST /extract`` when one prompter is served), ``POST
/extract/{name}/batch``, ``GET /review/{document_id}`` (the HTML review page of an answer: its grounded spans
highlighted in the source with their confidence), ``GET /`` (what is served), ``GET /healthz``, ``GET
/readyz``, ``GET /metrics``;
``/docs`` and ``/openapi.json`` show each prompter's own model as its response type. ``dspydantic serve``
runs it under uvicorn (see :mod:`dspydantic.cli.serve`).

Every extraction uses the async verbs (async HTTP; the local model runs in a worker thread behind its lock);
PDFs and images are decoded in a worker thread too, so no request blocks the event loop. Uvicorn's graceful
shutdown lets in-flight requests finish; the prompters' backends are closed after them.

With ``store=`` (an :class:`~dspydantic.store.ExtractionStore` or its URL; ``dspydantic serve --store``) every
answer and every failed extraction is recorded under its ``document_id`` (the id ``store.process`` gives the
same input and prompter), routed to the store's review queue by its per-field confidences.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

from pydantic import ConfigDict, Field, create_model

from .._prompter import Prompter
from .._result import ExtractionResult
from ..errors import ConfigurationError, DspydanticError, ExtractionError, LMError, MissingExtraError

try:
    from fastapi import Depends, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
except ImportError:  # this module is the [server] feature: say which extra is missing
    raise MissingExtraError("server", "fastapi") from None

from ._identity import PreparedInput
from ._server_asgi import _BodyLimit, _RequestMetrics
from ._server_bodies import _MIN_CONFIDENCE_DOC, ErrorOut, ExtractInput, ExtractRequest, MinConfidence, UsageOut
from ._server_prompters import _backends, _label, _transport, _unreachable, load_prompters
from ._server_served import _Answer, _Recent, _Served, _stored_source
from ._version import members as _members
from ._version import prompter_version
from .metrics import ExtractionMetrics
from .thresholds import check_threshold, fields_below

log = logging.getLogger("dspydantic.server")

__all__ = ["DEFAULT_MAX_BODY_BYTES", "app_from_env", "create_app", "load_prompters", "prompter_version"]

DEFAULT_MAX_BODY_BYTES = 10 * 1024 * 1024
CONFIG_ENV = "DSPYDANTIC_SERVE_CONFIG"
TOKEN_ENV = "DSPYDANTIC_API_TOKEN"

# --------------------------------------------------------------------------------------------------
# the app


def _error_body(exc: BaseException) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)}
    if isinstance(exc, ExtractionError):
        body["attempts"] = exc.attempts
    if isinstance(exc, LMError) and exc.status is not None:
        body["lm_status"] = exc.status
    return body


def _status_of(exc: BaseException) -> int:
    if isinstance(exc, MissingExtraError):
        return 501  # e.g. a PDF, and this server has no [pdf] extra: the message names it
    if isinstance(exc, ConfigurationError):
        return 422  # the input itself (empty text, undecodable image or PDF, missing template variable)
    if isinstance(exc, LMError):
        return 503 if exc.status == 429 else 502
    if isinstance(exc, ExtractionError):
        return 502  # the LM answered, but nothing valid
    return 500


def create_app(
    prompters: Mapping[str, Any],
    *,
    auth_token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_batch_items: int = 256,
    batch_concurrency: int = 16,
    cors_origins: Sequence[str] = (),
    readiness_timeout: float = 2.0,
    title: str = "dspydantic",
    store: Any = None,
    review_keep: int = 256,
    min_confidence: float | Mapping[str, float] | None = None,
    **load_kwargs: Any,
) -> Any:
    """A FastAPI app serving ``prompters`` (name -> Prompter, Prompter-like object or saved directory).

    Args:
        auth_token: when set, every route but ``/healthz``, ``/readyz`` and the docs needs
            ``Authorization: Bearer <token>``.
        max_body_bytes: larger request bodies get 413 before they are read.
        max_batch_items: most items of one batch request (more: 422).
        batch_concurrency: most batch items extracted at once, over every batch request of this app.
        cors_origins: origins allowed by CORS (none by default: CORS is off).
        store: an :class:`~dspydantic.store.ExtractionStore` or a database URL (the ``[db]`` extra): every
            extraction is recorded there (answers routed to its review queue by their per-field
            confidences; failures too), and ``/review/{document_id}`` reads it.
        min_confidence: the threshold of requests that give none (a number every field must reach, or a map
            of field paths to numbers, ``"*"`` for the others); a request's own ``min_confidence`` replaces it.
        review_keep: how many recent answers (with their source text) this process keeps for
            ``/review/{document_id}`` (0: none; the store's documents are reviewable either way).
        load_kwargs: passed to ``Prompter.load`` for paths (``model_id=``, ``api_base=``, ``cache=``...).
    """
    if max_body_bytes < 1 or max_batch_items < 1 or batch_concurrency < 1:
        raise ConfigurationError("max_body_bytes, max_batch_items and batch_concurrency must be positive")
    if review_keep < 0:
        raise ConfigurationError("review_keep must be 0 or more")
    if isinstance(store, str):
        from .store import ExtractionStore

        store = ExtractionStore(store)
    served = {name: _Served(name, p) for name, p in load_prompters(prompters, **load_kwargs).items()}
    if min_confidence is not None:
        for s in served.values():  # a field map must fit every served model
            check_threshold(min_confidence, s.target.model, what=f"min_confidence (serving {s.name!r})")
    default_threshold = min_confidence
    recent = _Recent(review_keep)
    metrics = ExtractionMetrics()
    batch_slots = asyncio.Semaphore(batch_concurrency)
    ready: dict[str, Any] = {"checked": 0.0, "body": None}

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        from .._cost import price

        # read the price table now (a few MB of JSON, once per process), not during the first request
        ids = {getattr(m, "model_id", None) for s in served.values() for m in (_members(s.target) or [s.target])}
        await asyncio.to_thread(lambda: [price(i) for i in ids])
        yield
        # after uvicorn's graceful shutdown: every in-flight request has finished
        for s in served.values():
            for backend in _backends(s.target):
                try:
                    backend.close()
                except Exception as exc:  # closing is best effort
                    log.debug("closing %r: %r", backend, exc)

    app = FastAPI(title=title, version=_version(), lifespan=lifespan,
                  description="Structured extraction into Pydantic models (dspydantic).")
    app.state.metrics = metrics
    app.state.prompters = {n: s.target for n, s in served.items()}
    app.state.store = store

    bearer = HTTPBearer(auto_error=False)

    async def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if auth_token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), auth_token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorize)] if auth_token is not None else []

    def _record_error(s: _Served, exc: BaseException, latency: float) -> None:
        metrics.observe_error(s.name, exc, latency)

    async def record(s: _Served, prep: PreparedInput, member: Any,
                     outcome: ExtractionResult[Any] | BaseException) -> str | None:
        """Store the outcome (with ``store=``); the stored status, None when it could not be written (the
        answer is not lost for it: logged, and counted as a ``StoreError``)."""
        if store is None or not isinstance(member, Prompter):
            return None
        try:
            doc = await asyncio.to_thread(store.put, member, prep, outcome, name=s.name)
        except Exception as exc:
            log.exception("could not record an extraction with %s in %s", s.name, store)
            metrics.observe_rejection(s.name, f"StoreError: {type(exc).__name__}")
            return None
        return str(doc.status)

    async def run_one(s: _Served, item: ExtractInput, min_conf: Any) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        if min_conf is None:
            min_conf = default_threshold
        prep: PreparedInput | None = None
        try:
            threshold = None if min_conf is None else check_threshold(min_conf, s.target.model)
            kwargs, prep = await s.prepare(item)
            result = await s.extract(item, kwargs, prep)
        except DspydanticError as exc:
            _record_error(s, exc, time.perf_counter() - started)
            body = _error_body(exc)
            if prep is not None and not isinstance(exc, ConfigurationError):
                member = s.member(None, exc)
                body["document_id"] = s.document_id(member, prep)
                status = await record(s, prep, member, exc)
                if status is not None:
                    body["status"] = status
            return _status_of(exc), body
        except Exception as exc:  # a bug: logged with its traceback, answered without internals
            _record_error(s, exc, time.perf_counter() - started)
            log.exception("extraction with %s failed unexpectedly", s.name)
            return 500, {"type": "InternalError", "message": "internal error (see the server log)"}
        metrics.observe_result(s.name, result, time.perf_counter() - started)
        member = s.member(result)
        answer = _Answer(result, prep, member, s.document_id(member, prep))
        recent.add(s.name, answer)
        body = s.result_json(answer)
        status = await record(s, prep, member, result)
        if status is not None:
            body["status"] = status
        if threshold is not None:
            below = fields_below(result, threshold)
            if below:
                metrics.observe_rejection(s.name, "LowConfidence")
                conf = min(c for c, _ in below.values())
                names = ", ".join(f"{f} {c:.3f} < {t:.3f}" if f != "*" else f"confidence {c:.3f} < {t:.3f}"
                                  for f, (c, t) in below.items())
                return 422, {
                    "type": "LowConfidence",
                    "message": f"below min_confidence: {names}",
                    "confidence": conf,
                    "min_confidence": threshold,
                    "fields": {f: c for f, (c, _) in below.items()},
                    "result": body,
                }
        return 200, body

    def add_routes(s: _Served, paths: list[str]) -> None:
        model = s.target.model
        safe = re.sub(r"\W", "_", s.name)
        response_model = create_model(
            f"Extraction_{safe}",
            data=(model, ...),
            confidence=(float, ...),
            field_confidences=(dict[str, float], {}),
            spans=(dict[str, list[tuple[int, int]]], {}),
            ungrounded=(list[str], []),
            calibrated=(bool, False),
            usage=(UsageOut, ...),
            attempts=(int, ...),
            cached=(bool, ...),
            prompter=(str, ...),
            prompter_version=(str, ...),
            answered_by=(str | None, None),
            document_id=(str, ""),
            status=(str | None, None),
        )
        slot = create_model(
            f"BatchSlot_{safe}", ok=(bool, ...), result=(response_model | None, None),  # type: ignore[arg-type]
            error=(ErrorOut | None, None),
        )
        batch_response = create_model(f"BatchExtraction_{safe}", results=(list[slot], ...))  # type: ignore[valid-type]
        batch_request = create_model(
            f"BatchRequest_{safe}",
            __config__=ConfigDict(extra="forbid"),
            items=(list[ExtractInput], Field(..., min_length=1, max_length=max_batch_items)),
            min_confidence=(MinConfidence, Field(None, description=_MIN_CONFIDENCE_DOC)),
        )
        errors: dict[int | str, dict[str, Any]] = {
            401: {"description": "missing or wrong bearer token"},
            413: {"description": "body too large"},
            422: {"description": "invalid body or input, or an answer below min_confidence"},
            502: {"description": "the LM failed, or gave no valid answer"},
        }

        async def extract(body: ExtractRequest) -> Any:
            status, payload = await run_one(s, body, body.min_confidence)
            if status != 200:
                return JSONResponse({"detail": payload}, status_code=status)
            return JSONResponse(payload)

        async def extract_batch(body: Any) -> Any:
            items: list[ExtractInput] = body.items
            min_conf: float | None = body.min_confidence

            async def one(item: ExtractInput) -> dict[str, Any]:
                async with batch_slots:
                    status, payload = await run_one(s, item, min_conf)
                return {"ok": True, "result": payload} if status == 200 else {"ok": False, "error": payload}

            return JSONResponse({"results": list(await asyncio.gather(*(one(i) for i in items)))})

        extract_batch.__annotations__["body"] = batch_request  # a class made here: not resolvable by name

        for path in paths:
            app.post(path, response_model=response_model, responses=errors, dependencies=guarded,
                     summary=f"extract one {model.__name__} ({s.name})", tags=[s.name])(extract)
        app.post(f"/extract/{s.name}/batch", response_model=batch_response, responses=errors, dependencies=guarded,
                 summary=f"extract many {model.__name__} ({s.name}); each item's error stays in its slot",
                 tags=[s.name])(extract_batch)

    only = len(served) == 1
    for s in served.values():
        add_routes(s, [f"/extract/{s.name}", *(["/extract"] if only else [])])

    @app.get("/", dependencies=guarded, summary="the prompters served")
    async def index() -> dict[str, Any]:
        return {"prompters": {n: {"model": s.target.model.__name__, "version": s.version,
                                  "routes": [f"/extract/{n}", f"/extract/{n}/batch"]} for n, s in served.items()}}

    @app.get("/review/{document_id}", dependencies=guarded, response_class=HTMLResponse,
             summary="the review page of an answer: its grounded spans in the source, each field's confidence",
             responses={404: {"description": "no such answer here (this process's recent ones, or the store)"}})
    async def review(document_id: str) -> Any:
        found = recent.get(document_id)
        if found is not None:
            name, answer = found
            page = _review_page(f"{name}: {document_id[:12]}", answer.result, answer.source)
        else:
            doc = None
            if store is not None and re.fullmatch(r"[0-9a-f]{64}", document_id):
                doc = await asyncio.to_thread(store.get, document_id)
            if doc is None:
                return JSONResponse({"detail": f"no answer with id {document_id!r} here"}, status_code=404)
            s = served.get(doc.prompter_name)
            data: Any = doc.data
            if s is not None and doc.data is not None:
                try:
                    data = s.target.model.model_validate(doc.data)
                except ValueError:
                    data = None
            shown = SimpleNamespace(
                data=data if hasattr(data, "model_dump") else None, confidence=doc.confidence,
                field_confidences=doc.field_confidences, calibrated=False, ungrounded=doc.ungrounded,
                spans={k: [tuple(x) for x in v] for k, v in doc.spans.items()},
            )
            page = _review_page(f"{doc.prompter_name}: {document_id[:12]} ({doc.status})", shown,
                                _stored_source(doc.input))
        return HTMLResponse(page, headers={"Content-Security-Policy": _REVIEW_CSP})

    @app.get("/healthz", summary="the process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="prompters loaded and their LM endpoints reachable")
    async def readyz() -> Any:
        now = time.monotonic()
        if ready["body"] is None or now - ready["checked"] > 2.0:
            checks: dict[str, Any] = {}
            for n, s in served.items():
                problems = []
                for backend in _backends(s.target):
                    transport = _transport(backend)
                    if transport is not None:
                        why = await _unreachable(transport, readiness_timeout)
                        if why is not None:
                            problems.append(f"{_label(transport)} unreachable ({why})")
                checks[n] = "ok" if not problems else "; ".join(problems)
            ok = all(v == "ok" for v in checks.values())
            ready.update(checked=now, body=({"ready": ok, "prompters": checks}, 200 if ok else 503))
        body, status = ready["body"]
        return JSONResponse(body, status_code=status)

    @app.get("/metrics", dependencies=guarded, summary="Prometheus metrics", response_class=Response)
    async def metrics_route() -> Any:
        data, content_type = metrics.render()
        return Response(content=data, media_type=content_type)

    asgi: Any = app
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    app.add_middleware(_RequestMetrics, metrics=metrics)
    return asgi


_REVIEW_CSP = "default-src 'none'; style-src 'unsafe-inline'"


def _review_page(title: str, result: Any, source: str) -> str:
    from ..confidence.review import render_review_html

    return render_review_html(result, source, title=f"Extraction review — {title}")


def _version() -> str:
    from .. import __version__

    return __version__


def app_from_env() -> Any:
    """The app ``dspydantic serve`` starts in each worker: its configuration comes as JSON in
    ``DSPYDANTIC_SERVE_CONFIG``, the bearer token (never on a command line) in ``DSPYDANTIC_API_TOKEN``."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise ConfigurationError(f"{CONFIG_ENV} is not set (start the service with `dspydantic serve`)")
    config = json.loads(raw)
    prompters = config.pop("prompters")
    load_kwargs = config.pop("load_kwargs", {}) or {}
    store_url = config.pop("store", None)
    review_below = config.pop("review_below", None)
    if store_url:
        from .store import ExtractionStore

        config["store"] = ExtractionStore(store_url, **({"review_below": review_below} if review_below is not None
                                                        else {}))
    return create_app(prompters, auth_token=os.environ.get(TOKEN_ENV) or None, **config, **load_kwargs)
