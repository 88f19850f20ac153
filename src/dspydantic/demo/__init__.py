"""``dspydantic demo``: optimize an invoice extractor end to end, offline, and show what changed.

The demo loads a small bundled dataset of invoices, receipts and billing emails (``invoices.json``,
written for this demo: fictional companies, several countries' conventions), splits it with ``seed``
into a training split and a held-out test split, and then

1. scores the un-optimized :class:`~dspydantic.Prompter` on the test split (**before**);
2. optimizes it on the training split only, within a fixed LM-call budget, with ``fallback="baseline"``:
   when the optimizer's candidate does not win on validation, the prompter serves the fair baseline
   (the default prompts with plain training demos) if that scored above the default prompts alone;
3. scores, as a reference, the optimizer's own fair baseline on the test split: the default prompts with
   as many plain labelled training examples as demos as the optimizer may use (**plain demos**);
4. saves it, reloads it from disk, and scores the reloaded prompter on the same test split (**after**);
5. prints a before/after table (per-field accuracy, overall score, LM calls, time) and a few extractions
   with their confidence.

Everything runs on the embedded local model by default (``model_id="local"``): no network, no key.
:func:`run_demo` is what ``dspydantic demo`` calls; :class:`Invoice` is the model the demo extracts.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from rich.console import Console

    from .._example import Example
    from .._prompter import Prompter

__all__ = [
    "FIELDS",
    "DemoRecord",
    "DemoSize",
    "Invoice",
    "load_examples",
    "load_hint",
    "load_records",
    "run_demo",
    "sizes",
    "split_records",
]

Currency = Literal["USD", "EUR", "GBP", "CHF", "JPY"]


class Invoice(BaseModel):
    """An invoice, receipt or bill, as the demo extracts it."""

    vendor: str = Field(description="Company that issued the invoice")
    invoice_number: str | None = Field(default=None, description="Invoice or receipt number")
    invoice_date: date | None = Field(default=None, description="Date the invoice was issued")
    due_date: date | None = Field(default=None, description="Date by which payment is due")
    currency: Currency = Field(description="Currency of the total")
    total: float = Field(description="Grand total including tax")
    customer: str | None = Field(default=None, description="Who the invoice is addressed to")


#: the field paths the demo reports on, in the order of the model
FIELDS: tuple[str, ...] = tuple(Invoice.model_fields)

_DATA_FILE = "invoices.json"
#: the optimizer trains on this share of the demo's training split and validates candidates on the rest
_TRAIN_SPLIT = 0.6


# --------------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoRecord:
    """One labelled document of the bundled dataset."""

    id: str
    style: str
    language: str
    text: str
    expected: dict[str, Any]

    def example(self) -> Example:
        from .._example import Example

        return Example(text=self.text, expected_output=dict(self.expected))


def load_records() -> list[DemoRecord]:
    """The bundled dataset, in file order (labels as JSON: ISO dates, currency codes)."""
    raw = resources.files(__package__).joinpath(_DATA_FILE).read_text(encoding="utf-8")
    data = json.loads(raw)
    return [
        DemoRecord(
            id=str(r["id"]),
            style=str(r["style"]),
            language=str(r.get("language", "en")),
            text=str(r["text"]),
            expected=dict(r["expected"]),
        )
        for r in data["examples"]
    ]


def load_examples() -> list[Example]:
    """The bundled dataset as :class:`~dspydantic.Example` s."""
    return [r.example() for r in load_records()]


@dataclass(frozen=True)
class DemoSize:
    """How big a demo run is: split sizes and the optimizer's LM-call budget."""

    n_train: int
    n_test: int
    max_lm_calls: int
    n_samples: int = 3


def sizes(quick: bool) -> DemoSize:
    """The full run (train 18 / test 12, 60 optimizer LM calls) or the quick one (10 / 6, 24 calls)."""
    return DemoSize(n_train=10, n_test=6, max_lm_calls=24) if quick else DemoSize(18, 12, 60)


def split_records(
    records: Sequence[DemoRecord], seed: int, n_train: int, n_test: int
) -> tuple[list[DemoRecord], list[DemoRecord]]:
    """Shuffle with ``seed`` and cut a held-out test split and a disjoint training split."""
    if n_train + n_test > len(records):
        raise ValueError(f"the dataset has {len(records)} documents, fewer than {n_train} + {n_test}")
    order = list(records)
    random.Random(seed).shuffle(order)
    return order[n_test : n_test + n_train], order[:n_test]


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------


@dataclass
class _Measured:
    """An evaluation report, its wall time and the number of few-shot demos of the prompt scored."""

    report: Any
    seconds: float
    demos: int = 0
    #: the prompts scored (a reloaded prompter serving the same ones is not scored again)
    state: Any = None


def load_hint(out: str, model_id: str) -> str:
    """The Python that loads the demo's saved prompter (printed at the end of the demo; runs as written)."""
    return (
        "from dspydantic import Prompter\n"
        "from dspydantic.demo import Invoice\n"
        f"prompter = Prompter.load({out!r}, model=Invoice, model_id={model_id!r})"
    )


def run_demo(
    model_id: str = "local",
    optimizer: str = "auto",
    out: str = "./demo_invoice_prompter",
    seed: int = 0,
    quick: bool = False,
) -> int:
    """Run the demo (see the module docs) and print its report; returns a process exit code (0: success)."""
    from rich.console import Console

    from ..errors import DspydanticError

    console = Console()
    try:
        return _run(console, model_id=model_id, optimizer=optimizer, out=out, seed=seed, quick=quick)
    except DspydanticError as exc:
        console.print(f"[bold red]demo failed:[/bold red] {type(exc).__name__}: {exc}")
        return 1


def _run(console: Console, *, model_id: str, optimizer: str, out: str, seed: int, quick: bool) -> int:
    from rich.rule import Rule

    from .._prompter import Prompter
    from ..errors import ExtractionError
    from ..lm import is_local_id

    size = sizes(quick)
    local = is_local_id(model_id)
    threads = 1 if local else 4  # the local model runs one call at a time anyway
    started = time.perf_counter()

    records = load_records()
    train, test = split_records(records, seed, size.n_train, size.n_test)
    train_examples = [r.example() for r in train]
    test_examples = [r.example() for r in test]

    console.print(Rule("[bold]dspydantic demo[/bold]: invoice extraction"))
    console.print(
        f"Dataset: {len(records)} invoices, receipts and billing emails (USD/EUR/GBP/CHF/JPY; US and European "
        f"formats). Split with seed {seed}: [bold]{len(train)}[/bold] to optimize on, [bold]{len(test)}[/bold] "
        "held out for testing (never shown to the optimizer)."
    )
    console.print(
        f"Model: [bold]{model_id}[/bold]   optimizer: [bold]{optimizer}[/bold]   "
        f"budget: at most {size.max_lm_calls} LM requests for the optimization"
    )

    if not console.is_terminal:  # a file or a CI log: no spinner, a line per step instead
        console.print(f"loading {model_id} ...")
    with console.status(f"loading {model_id} ..."):
        prompter = Prompter(model=Invoice, model_id=model_id)
        if local:
            # the local model loads on its first call: warm it up on a training document, so the model's
            # load time is not counted in the first evaluation's time
            try:
                prompter.predict(min(train, key=lambda r: len(r.text)).text)
            except ExtractionError:
                pass
    try:
        before = _evaluate(console, prompter, test_examples, "1/4 un-optimized prompter on the test split", threads)

        console.print(Rule("2/4 optimizing on the training split only"))
        t0 = time.perf_counter()
        result = _optimize(console, prompter, train_examples, optimizer, seed, size.max_lm_calls, threads)
        _print_optimization(console, result, time.perf_counter() - t0)
        prompter.save(out)

        # the optimizer's fair baseline (same demo budget, plain training examples as demos), on the test split;
        # when that is what the prompter serves, it is scored once, as the reloaded prompter in step 4
        plain: _Measured | None = None
        served = _served(result)
        if result.baseline_state.demos:  # the un-optimized prompter had none: these are the plain demos
            k = len(result.baseline_state.demos)
            title = f"3/4 reference: default prompts + {k} plain training demos"
            if served == "baseline":
                console.print(Rule(title))
                console.print("the saved prompter serves exactly these prompts: scored once, in step 4")
            else:
                prompter.state = result.baseline_state
                plain = _evaluate(console, prompter, test_examples, title, threads)
    finally:
        prompter.close()

    reloaded = Prompter.load(out, model=Invoice, model_id=model_id)
    try:
        title = "4/4 saved, reloaded prompter on the test split"
        if served == "original" and reloaded.state == before.state:
            console.print(Rule(title))
            console.print("the saved prompter serves the un-optimized prompts (checked after reloading): the "
                          "score of step 1 stands")
            after = before
        else:
            after = _evaluate(console, reloaded, test_examples, title, threads)
        if served == "baseline" and result.baseline_state.demos:
            plain = _Measured(after.report, after.seconds, demos=len(result.baseline_state.demos))
        _print_table(console, before, plain, after, n_test=len(test), served=served)
        _print_samples(console, reloaded, test[: size.n_samples])
    finally:
        reloaded.close()

    console.print(f"Saved the optimized prompter to [bold]{out}[/bold]; use it in Python with")
    console.print(load_hint(out, model_id), style="cyan", highlight=False, markup=False, soft_wrap=True)
    console.print(f"Total time: {time.perf_counter() - started:.1f} s")
    return 0


def _progress(console: Console) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _evaluate(console: Console, prompter: Prompter, examples: list[Example], title: str, threads: int) -> _Measured:
    from rich.rule import Rule

    console.print(Rule(title))
    t0 = time.perf_counter()
    lines = not console.is_terminal  # a file or a CI log: one line per document instead of a bar
    with _progress(console) as progress:
        task = progress.add_task("extracting", total=len(examples))

        def on_progress(event: dict[str, Any]) -> None:
            done = int(event.get("done", 0))
            progress.update(task, completed=done)
            if lines:
                console.print(f"  extracted {done}/{event.get('total', len(examples))} "
                              f"({time.perf_counter() - t0:.1f} s)")

        report = prompter.evaluate(examples, num_threads=threads, on_progress=on_progress)
    seconds = time.perf_counter() - t0
    console.print(
        f"score {report.score:.3f}  ({report.accuracy:.0%} of the {report.n} invoices fully right; "
        f"{report.usage.calls} LM calls, {seconds:.1f} s)"
    )
    return _Measured(report, seconds, demos=len(prompter.demos), state=prompter.state)


def _optimize(
    console: Console,
    prompter: Prompter,
    examples: list[Example],
    optimizer: str,
    seed: int,
    max_lm_calls: int,
    threads: int,
) -> Any:
    """``Prompter.optimize`` with the demo's budget. Its own progress bar shows on a terminal (stderr); the
    scores it reports are printed as lines."""

    lines = not console.is_terminal  # a file or a CI log: a line per stage

    def on_progress(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if lines and kind == "stage":
            console.print(f"  stage: {event.get('stage')}")
        if kind == "start":
            console.print(
                f"  {event.get('optimizer')}: {event.get('n_train')} training / {event.get('n_val')} validation "
                f"invoices (both from the training split); {event.get('reason')}"
            )
        elif kind == "score" and event.get("score") is not None:
            console.print(f"  {event.get('what')} on its validation split: {float(event['score']):.3f}")

    return prompter.optimize(
        examples,
        optimizer=optimizer,
        seed=seed,
        train_split=_TRAIN_SPLIT,
        max_lm_calls=max_lm_calls,
        num_threads=threads,
        on_progress=on_progress,
        fallback="baseline",
    )


def _served(result: Any) -> str:
    """What the optimized prompter serves: ``"candidate"``, ``"baseline"`` or ``"original"``."""
    if result.accepted:
        return "candidate"
    return "baseline" if result.state == result.baseline_state and result.baseline_state.demos else "original"


# --------------------------------------------------------------------------------------------------
# printing
# --------------------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _delta(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return ""
    d = 100 * (after - before)
    if abs(d) < 0.05:
        return "[dim]±0.0[/dim]"
    color = "green" if d > 0 else "red"
    return f"[{color}]{d:+.1f}[/{color}]"


def _print_optimization(console: Console, result: Any, seconds: float) -> None:
    verdict = {
        "candidate": "[green]accepted[/green]",
        "baseline": "[yellow]not accepted: serving the fair baseline (plain training demos), which scored above "
        "the default prompts[/yellow]",
        "original": "[yellow]not accepted: prompts unchanged[/yellow]",
    }[_served(result)]
    candidate = "n/a" if result.candidate_score is None else f"{result.candidate_score:.3f}"
    console.print(
        f"optimizer [bold]{result.optimizer}[/bold]: validation score {result.baseline_score:.3f} (baseline) -> "
        f"{candidate} (candidate): {verdict}"
    )
    console.print(
        f"{result.lm_calls} LM calls ({result.cache_hits} cache hits), {result.prompt_tokens} prompt + "
        f"{result.completion_tokens} completion tokens, {seconds:.1f} s"
        + ("  [yellow](budget exhausted)[/yellow]" if result.budget_exhausted else "")
    )
    if result.message:
        console.print(f"[dim]{result.message}[/dim]")


def _print_table(
    console: Console, before: _Measured, plain: _Measured | None, after: _Measured, *, n_test: int, served: str
) -> None:
    from rich.table import Table

    columns: list[tuple[str, _Measured]] = [("before", before)]
    if plain is not None:
        columns.append(("plain demos", plain))
    columns.append(("after", after))
    lines = ["before = the un-optimized prompter (default prompts, no few-shot demos)."]
    if plain is not None:
        lines.append(
            f"plain demos = the default prompts with {plain.demos} labelled training invoices as demos, as many as the "
            "optimizer may use: the optimizer's own fair baseline, here scored on the test split."
        )
    why = {
        "candidate": ".",
        "baseline": " (the optimizer's candidate was not accepted; the fair baseline, default prompts + plain "
        "demos, beat the default prompts on validation, so it is served).",
        "original": " (the optimizer's candidate was not accepted, so these are the default prompts).",
    }[served]
    lines.append("after = the optimized prompter, saved to disk and reloaded" + why)
    lines.append("change = after minus before, in percentage points.")
    lines.append(
        "All columns: the same held-out invoices, exact match per field (dates, amounts and currency by value, "
        "text ignoring case)."
    )
    table = Table(title=f"Held-out test split: the same {n_test} invoices in every column")
    table.add_column("field")
    for name, _ in columns:
        table.add_column(name, justify="right")
    table.add_column("change", justify="right")

    def row(label: str, values: list[float | None], fmt: Any = _pct) -> None:
        table.add_row(label, *(fmt(v) for v in values), _delta(values[0], values[-1]))

    reports = [m.report for _, m in columns]
    for path in FIELDS:
        row(path, [r.per_field.get(path) for r in reports])
    table.add_section()
    row("[bold]overall score[/bold]", [r.score for r in reports])
    row("invoices fully right", [r.accuracy for r in reports])
    row("F1 (field values)", [r.f1 for r in reports], lambda v: f"{v:.3f}")
    table.add_section()
    table.add_row("LM calls", *(str(r.usage.calls) for r in reports), "")
    table.add_row("tokens", *(str(r.usage.total_tokens) for r in reports), "")
    table.add_row("time", *(f"{m.seconds:.1f} s" for _, m in columns), "")
    console.print()
    console.print(table)
    for line in lines:
        console.print(f"[dim]{line}[/dim]")


def _print_samples(console: Console, prompter: Prompter, records: Sequence[DemoRecord]) -> None:
    from rich.table import Table

    from ..errors import ExtractionError

    if not records:
        return
    table = Table(title="A few extractions by the reloaded prompter", show_lines=True)
    table.add_column("document", max_width=40, overflow="fold")
    table.add_column("extracted", overflow="fold")
    table.add_column("confidence", justify="right")
    table.add_column("fields right", justify="right")
    for r in records:
        snippet = " ".join(r.text.split())[:80] + ("..." if len(r.text) > 80 else "")
        try:
            res = prompter.predict_with_confidence(r.text)
        except ExtractionError as exc:
            table.add_row(snippet, f"[red]no valid output[/red]: {exc}", "-", f"0/{len(FIELDS)}")
            continue
        got = res.data.model_dump(mode="json")
        expected = Invoice.model_validate(r.expected).model_dump(mode="json")
        right = sum(1 for k in FIELDS if _same(got.get(k), expected.get(k)))
        shown = "\n".join(f"{k}: {got[k]}" for k in FIELDS)
        table.add_row(snippet, shown, f"{res.confidence:.2f}", f"{right}/{len(FIELDS)}")
    console.print()
    console.print(table)


def _same(got: Any, expected: Any) -> bool:
    """Equality as the exact-match evaluator sees it: text ignoring case and runs of spaces."""
    if isinstance(got, str) and isinstance(expected, str):
        return " ".join(got.split()).casefold() == " ".join(expected.split()).casefold()
    return bool(got == expected)
