"""Accuracy on the real embedded model (issue 14): the README's quickstart sentences give the right numbers.

Run under the machine-wide lock: ``flock /tmp/dspydantic-llama.lock pytest -m local tests/test_accuracy_local.py``."""

from __future__ import annotations

import importlib.util

import pytest
from pydantic import BaseModel, Field

pytestmark = [
    pytest.mark.local,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs dspydantic[local]"),
]

from dspydantic import Prompter  # noqa: E402


class Invoice(BaseModel):  # the README's quickstart model
    vendor: str = Field(description="Company that issued the invoice")
    total: float = Field(description="Grand total including tax")
    currency: str


@pytest.fixture(scope="module")
def prompter() -> Prompter:
    return Prompter(model=Invoice, model_id="local")


@pytest.mark.parametrize(
    ("text", "total", "currency"),
    [
        ("Invoice from Acme GmbH. Total due: 1.200,50 EUR", 1200.5, "EUR"),  # was 1.2005 (a JSON-number grammar)
        ("Receipt: Corner Cafe, 2 coffees, GBP 6.40", 6.4, "GBP"),  # was 12.4
        ("Invoice INV-9 from Globex Ltd. Total: 2,380.00 USD", 2380.0, "USD"),  # the demo's 2.38
    ],
)
def test_the_quickstart_sentences_give_the_numbers_the_document_writes(
    prompter: Prompter, text: str, total: float, currency: str
) -> None:
    invoice = prompter.run(text)
    assert invoice.total == total
    assert invoice.currency == currency
