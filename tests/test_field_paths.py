"""The field-path grammar has one source (dspydantic._schema): walking, joining, owners, 0.1's form."""

from __future__ import annotations

from pydantic import BaseModel

from dspydantic._schema import (
    ancestor_paths,
    join_path,
    legacy_path,
    legacy_paths,
    model_schema,
    owning_path,
    schema_path,
    walk_fields,
)


class Price(BaseModel):
    amount: float


class Item(BaseModel):
    name: str
    prices: dict[str, Price] = {}


class Order(BaseModel):
    vendor: str
    items: list[Item] = []
    tags: list[str] = []


def test_one_grammar_for_every_path_computation() -> None:
    schema = model_schema(Order)
    known = {p for p, _, _ in walk_fields(schema)}
    assert known == {"vendor", "items", "items[].name", "items[].prices", "items[].prices{}.amount", "tags"}
    assert join_path("", "vendor") == "vendor" and join_path("items[]", "name") == "items[].name"
    assert ancestor_paths("items[].prices{}.amount") == ["items", "items[].prices"]
    # an instance path of the answer -> its field path, and the field that owns a value
    assert schema_path(("items", 0, "prices", "EUR", "amount"), known) == "items[].prices{}.amount"
    assert schema_path(("tags", 2), known) == "tags[]"
    assert owning_path("tags[]", known) == "tags" and owning_path("nope.x", known) is None
    # dspydantic 0.1 wrote paths without [] and {}
    assert legacy_path("items[].prices{}.amount") == "items.prices.amount"
    assert legacy_paths(schema)["items.prices.amount"] == "items[].prices{}.amount"
    assert legacy_paths(schema)["vendor"] == "vendor"
