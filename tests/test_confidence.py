"""Per-field confidence and grounding: the pure parts, then end to end through the fake OpenAI-compatible
server (real HTTP; token log-probabilities as a provider returns them), then on the real local model."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from dspydantic import ConfigurationError, Example, ExtractionError, ExtractionResult, PersistenceError, Prompter
from dspydantic.confidence import Calibrator, FieldSignals, auroc, expected_calibration_error, fit_calibrator, ground
from dspydantic.confidence._jsonpos import locate_values
from dspydantic.confidence.metrics import reliability_bins, reliability_diagram
from dspydantic.confidence.signals import UNGROUNDED_FACTOR, align_tokens
from dspydantic.testing import FakeLLMServer, Reply, last_user_text

# --------------------------------------------------------------------------------------------------
# grounding
# --------------------------------------------------------------------------------------------------

SOURCE = "Rechnung von Müller & Söhne GmbH — 東京 office 🎉, Straße 5, Cafe\u0301 Noir, ＡＣＭＥ Corp"


def spanned(source: str, g: object) -> list[str]:
    return [source[a:b] for a, b in g.spans]  # type: ignore[attr-defined]


def test_exact_spans_are_code_points_in_non_ascii_text() -> None:
    for value in ("Müller & Söhne GmbH", "東京", "🎉", "Straße 5"):
        g = ground(value, SOURCE)
        assert g.method == "exact" and spanned(SOURCE, g) == [value]
    # the emoji is one code point (two in UTF-16): the span after it is still right
    start = SOURCE.index("Straße")
    assert ground("Straße", SOURCE).spans == ((start, start + 6),)


def test_normalized_tier_case_whitespace_and_unicode() -> None:
    g = ground("müller  &  SÖHNE gmbh", SOURCE)
    assert g.method == "normalized" and spanned(SOURCE, g) == ["Müller & Söhne GmbH"]
    # a precomposed é in the value finds e + combining acute in the source; the span covers both
    g = ground("Café Noir", SOURCE)
    assert g.method == "normalized" and spanned(SOURCE, g) == ["Cafe\u0301 Noir"]
    # NFKC: fullwidth letters
    g = ground("ACME Corp", SOURCE)
    assert g.method == "normalized" and spanned(SOURCE, g) == ["ＡＣＭＥ Corp"]


def test_fuzzy_tier_and_what_is_not_found() -> None:
    g = ground("Muller & Sohne GmbH", SOURCE)
    assert g.method == "fuzzy" and 0.85 <= g.score < 1 and spanned(SOURCE, g) == ["Müller & Söhne GmbH"]
    assert not ground("Globex Industries", SOURCE).grounded
    # short values never match fuzzily, and not inside a word
    assert not ground("Mül", SOURCE).grounded
    assert not ground("x", "2x 1x").grounded and ground("x", "a x b").spans == ((2, 3),)
    assert not ground("", SOURCE).grounded and not ground("Müller", "").grounded


# --------------------------------------------------------------------------------------------------
# raw answer positions and token alignment
# --------------------------------------------------------------------------------------------------


def test_values_are_located_in_raw_answers_with_prose_and_fences() -> None:
    raw = 'Sure:\n```json\n{"a": "Köln", "b": {"c": [1, null]}}\n```'
    located = {loc.segments: raw[loc.start : loc.end] for loc in locate_values(raw) or []}
    assert located[("a",)] == '"Köln"'
    assert located[("b", "c", 1)] == "null" and located[("b",)] == '{"c": [1, null]}'
    assert locate_values("no json here") is None


def test_token_alignment_tolerates_dropped_whitespace_and_rejects_other_text() -> None:
    raw = '{"a": "x y"}'
    assert align_tokens(raw, ['{"a":', '"x', 'y"}']) == [(0, 5), (6, 8), (9, 12)]
    assert align_tokens(raw, ["zzz", "qqq", '"x']) is None


# --------------------------------------------------------------------------------------------------
# calibration and metrics
# --------------------------------------------------------------------------------------------------


def synthetic(n: int, seed: int) -> tuple[list[FieldSignals], list[float]]:
    """Fields whose value-token probability is informative but over-confident (right with p**2)."""
    rng = random.Random(seed)
    sig, lab = [], []
    for _ in range(n):
        p = rng.uniform(0.05, 1.0)
        grounded = rng.random() < 0.8
        right = rng.random() < p**2 * (1.0 if grounded else 0.3)
        sig.append(FieldSignals(logprob=math.log(p), min_logprob=math.log(p), grounding=1.0 if grounded else 0.0))
        lab.append(1.0 if right else 0.0)
    return sig, lab


@pytest.mark.parametrize("method", ["isotonic", "platt", "logistic"])
def test_calibrators_fit_on_one_split_and_calibrate_another(method: str) -> None:
    fit_sig, fit_lab = synthetic(2000, 1)
    test_sig, test_lab = synthetic(2000, 2)
    cal = fit_calibrator(fit_sig, fit_lab, method)  # type: ignore[arg-type]
    before = [s.raw for s in test_sig]
    after = [cal.predict(s) for s in test_sig]
    assert expected_calibration_error(before, test_lab) > 0.1  # the raw signal is over-confident
    assert expected_calibration_error(after, test_lab) < 0.05
    assert auroc(after, test_lab) > 0.75
    again = Calibrator.from_json(json.loads(json.dumps(cal.to_json())))
    assert [again.predict(s) for s in test_sig[:50]] == after[:50]


def test_calibrator_needs_both_outcomes() -> None:
    sig, _ = synthetic(10, 0)
    with pytest.raises(ConfigurationError, match="right and wrong"):
        fit_calibrator(sig, [1.0] * 10)


@pytest.mark.parametrize(
    "data",
    [
        {"format": "dspydantic.calibrator", "format_version": 1, "kind": "pickle", "params": {}},
        {"format": "dspydantic.calibrator", "format_version": 1, "kind": "platt", "params": {"a": "__import__('os')"}},
        {"format": "dspydantic.calibrator", "format_version": 1, "kind": "isotonic",
         "params": {"x": [0.5, 0.1], "y": [0.1, 0.2]}},
        {"format": "dspydantic.calibrator", "format_version": 1, "kind": "logistic",
         "params": {"bias": 0, "weights": [1], "mean": [0], "scale": [1]}},
        {"format": "dspydantic.calibrator", "format_version": 99, "kind": "platt", "params": {"a": 1, "b": 0}},
        ["not", "an", "object"],
    ],
)
def test_hostile_calibrator_json_is_rejected(data: object) -> None:
    with pytest.raises(ValueError):
        Calibrator.from_json(data)


def test_auroc_and_ece_on_known_values(tmp_path: Path) -> None:
    assert auroc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1]) == 0.5
    assert math.isnan(auroc([0.1, 0.2], [1, 1]))
    # two bins: 0.25 (right 50%) and 0.95 (right 100%): |0.5-0.25|*2/4 + |1-0.95|*2/4
    assert expected_calibration_error([0.25, 0.25, 0.95, 0.95], [1, 0, 1, 1]) == pytest.approx(0.15)
    assert [b.count for b in reliability_bins([0.05, 0.95, 1.0], [0, 1, 1], 2)] == [1, 2]
    png = tmp_path / "r.png"
    reliability_diagram(png, {"a": ([0.2, 0.9], [0, 1])})
    assert png.read_bytes().startswith(b"\x89PNG")
    from PIL import Image

    assert Image.open(png).size == (560, 560)


# --------------------------------------------------------------------------------------------------
# end to end through the fake server
# --------------------------------------------------------------------------------------------------


class Address(BaseModel):
    city: str | None = None
    street: str | None = None


class Item(BaseModel):
    name: str
    qty: int


class Invoice(BaseModel):
    vendor: str
    total: float
    address: Address | None = None
    items: list[Item] = []
    note: str | None = None


DOC = "Rechnung von Müller & Söhne — 東京 office, Straße 5. 2x Kaffee, 1x Grüner Tee. Summe 12,50 €"
ANSWER = {
    "vendor": "Müller & Söhne",
    "total": 12.5,
    "address": {"city": "東京", "street": "Straße 5"},
    "items": [{"name": "Kaffee", "qty": 2}, {"name": "Grüner Tee", "qty": 1}],
    "note": None,
}


def make(srv: FakeLLMServer, model: type[BaseModel] = Invoice, **kw: object) -> Prompter:
    return Prompter(model, "openai/fake", api_base=srv.base_url, api_key="k", retry_backoff=0, **kw)


def test_spans_for_nested_non_ascii_answer_and_field_confidences_for_every_path(srv: FakeLLMServer) -> None:
    srv.add_response(ANSWER)
    res = make(srv).predict_with_confidence(DOC)
    assert res.ungrounded == []
    got = {path: [DOC[a:b] for a, b in spans] for path, spans in res.spans.items()}
    assert got == {
        "vendor": ["Müller & Söhne"],
        "address.city": ["東京"],
        "address.street": ["Straße 5"],
        "items[].name": ["Kaffee", "Grüner Tee"],
    }
    assert set(res.field_confidences) == {
        "vendor", "total", "address", "address.city", "address.street", "items", "items[].name", "items[].qty",
        "note",
    }
    assert res.field_signals["note"].null and res.field_signals["total"].grounding is None  # not a string
    assert res.confidence == min(res.field_confidences.values()) == 1.0  # no logprobs, grounded, no re-ask


def test_ungrounded_value_is_flagged_and_lowers_only_its_field(srv: FakeLLMServer) -> None:
    srv.add_response({**ANSWER, "vendor": "Globex Industries"})
    res = make(srv).predict_with_confidence(DOC)
    assert res.ungrounded == ["vendor"] and "vendor" not in res.spans
    assert res.field_confidences["vendor"] == pytest.approx(UNGROUNDED_FACTOR)
    assert res.field_confidences["address.city"] == 1.0
    assert res.confidence == pytest.approx(UNGROUNDED_FACTOR)
    assert res.data.vendor == "Globex Industries"  # flagged, not changed: require_grounding is off


def test_a_field_the_answer_left_out_still_gets_a_confidence(srv: FakeLLMServer) -> None:
    srv.add_response({"vendor": "Müller & Söhne", "total": 12.5, "address": {"city": "東京"}})
    res = make(srv).predict_with_confidence(DOC)
    # note, items and address.street were left out: absent (their defaults), with a confidence to route on
    assert {"note", "items", "address.street"} <= set(res.field_confidences)
    assert res.field_signals["note"].null and res.field_signals["address.street"].null
    assert "items[].name" not in res.field_confidences  # no item, nothing to say about item fields


def test_value_token_logprobs_reach_their_own_field(srv: FakeLLMServer) -> None:
    class Pair(BaseModel):
        vendor: str
        city: str

    # the fake splits the content at whitespace: one token per key and one per value here
    content = '{"vendor": "Acme", "city": "Berlin"}'
    srv.add_response(Reply(content, logprobs=[-0.01, -2.0, -0.01, -0.05]))
    res = make(srv, Pair, logprobs=True).predict_with_confidence("Acme GmbH, Berlin")
    assert res.confidence_source == "logprobs"
    assert res.field_signals["vendor"].n_tokens == 1
    assert res.field_confidences["vendor"] == pytest.approx(math.exp(-2.0), abs=1e-4)
    assert res.field_confidences["city"] == pytest.approx(math.exp(-0.05), abs=1e-4)
    assert res.confidence == res.field_confidences["vendor"]


def test_require_grounding_makes_an_optional_value_none(srv: FakeLLMServer) -> None:
    srv.add_response({**ANSWER, "note": "paid by card", "address": {"city": "Paris", "street": "Straße 5"}})
    res = make(srv, require_grounding=True).predict_with_confidence(DOC)
    assert res.data.note is None and res.data.address.city is None
    assert res.data.address.street == "Straße 5"
    assert set(res.ungrounded) == {"note", "address.city"} and res.attempts == 1
    assert srv.request_count == 1


def test_require_grounding_drops_an_ungrounded_list_item(srv: FakeLLMServer) -> None:
    class Tags(BaseModel):
        tags: list[str]

    srv.add_response({"tags": ["Kaffee", "Espresso", "Tee"]})
    res = make(srv, Tags, require_grounding={"tags"}).predict_with_confidence(DOC)
    assert res.data.tags == ["Kaffee", "Tee"] and res.ungrounded == ["tags"]


def test_require_grounding_reasks_a_required_field_with_the_reason(srv: FakeLLMServer) -> None:
    srv.add_response({**ANSWER, "vendor": "Globex"})
    srv.add_response(ANSWER)
    res = make(srv, require_grounding={"vendor"}).predict_with_confidence(DOC)
    assert res.data.vendor == "Müller & Söhne" and res.attempts == 2
    feedback = srv.requests[1].body["messages"][-1]["content"]
    assert "vendor" in feedback and "Globex" in feedback and "does not occur in the document" in feedback
    # always made up: an ExtractionError after the retries, saying why
    srv.set_responder(lambda body: {**ANSWER, "vendor": "Globex"})
    with pytest.raises(ExtractionError, match=r"ungrounded|not found"):
        make(srv, require_grounding={"vendor"}, max_retries=1).run(DOC)


def test_require_grounding_per_field_from_the_schema_flag(srv: FakeLLMServer) -> None:
    class Flagged(BaseModel):
        vendor: str | None = Field(default=None, json_schema_extra={"require_grounding": True})
        note: str | None = None

    srv.add_response({"vendor": "Globex", "note": "made up"})
    res = make(srv, Flagged).predict_with_confidence(DOC)
    assert res.data.vendor is None and res.data.note == "made up"  # only the flagged field is enforced
    assert set(res.ungrounded) == {"vendor", "note"}


def test_require_grounding_names_are_checked_before_any_call(srv: FakeLLMServer) -> None:
    with pytest.raises(ConfigurationError, match="unknown field"):
        make(srv, require_grounding={"vendr"})
    with pytest.raises(ConfigurationError, match="no free string"):
        make(srv, require_grounding={"total"})
    assert srv.request_count == 0


def test_agreement_across_samples(srv: FakeLLMServer) -> None:
    srv.add_response(ANSWER)
    srv.add_response({**ANSWER, "total": 99.0})  # sample 1 disagrees on total
    srv.add_response(ANSWER)  # sample 2 agrees
    res = make(srv, confidence_samples=2).predict_with_confidence(DOC)
    assert res.usage.calls == 3 and res.confidence_source == "agreement"
    assert res.field_signals["total"].agreement == 0.5 and res.field_signals["vendor"].agreement == 1.0
    assert res.field_confidences["total"] == pytest.approx(0.5)
    samples = [r.body for r in srv.requests[1:]]
    assert [b["temperature"] for b in samples] == [0.7, 0.7] and [b["seed"] for b in samples] == [1, 2]


def test_confidence_options_are_checked_before_any_call(srv: FakeLLMServer) -> None:
    for bad in ({"confidence_samples": -1}, {"confidence_samples": 65}, {"confidence_samples": True},
                {"sample_temperature": 0}, {"sample_temperature": float("nan")}, {"sample_temperature": "hot"},
                {"calibrator": {"kind": "platt"}}):
        with pytest.raises(ConfigurationError, match=next(iter(bad))):
            make(srv, **bad)
    # a misspelt one is unknown, and the message lists the confidence options among the accepted
    with pytest.raises(ConfigurationError, match="require_grounding") as err:
        make(srv, require_grouding=True)
    assert "unknown argument" in str(err.value) and "confidence_samples" in str(err.value)
    assert srv.request_count == 0


def test_a_cache_hit_gives_the_same_field_confidences(srv: FakeLLMServer, tmp_path: Path) -> None:
    class Pair(BaseModel):
        vendor: str
        city: str

    # tokens (the fake splits at whitespace): '{"vendor":' '"Acme",' '"city":' '"Berlin"}'
    srv.add_response(Reply('{"vendor": "Acme", "city": "Berlin"}', logprobs=[-0.01, -2.0, -0.01, -0.05]))
    srv.add_response(Reply('{"vendor": "Acme", "city": "Bonn"}', logprobs=[-0.01, -0.5, -0.01, -0.5]))  # sample
    cache = str(tmp_path / "cache.db")

    def run() -> ExtractionResult:
        # a new Prompter each time: the second run reads the SQLite file, not the first one's memory
        p = make(srv, Pair, logprobs=True, confidence_samples=1, cache=cache)
        try:
            return p.predict_with_confidence("Acme GmbH, Berlin")
        finally:
            p.close()

    first, again = run(), run()
    assert first.usage.calls == 2 and not first.cached
    assert again.cached and again.usage.calls == 0 and again.usage.cache_hits == 2 and srv.request_count == 2
    # the value's own token, not the whole answer's mean: the cached answer kept its token texts
    assert again.field_signals["vendor"].min_logprob == pytest.approx(-2.0)
    assert again.field_signals["city"].agreement == 0.0  # the cached sample still disagrees
    assert again.field_signals == first.field_signals and again.field_confidences == first.field_confidences
    assert again.spans == first.spans and again.confidence == first.confidence


def test_an_answer_that_failed_grounding_is_never_cached(srv: FakeLLMServer, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache.db")
    srv.add_response({**ANSWER, "vendor": "Globex"})  # made up: re-asked
    srv.add_response(ANSWER)
    first = make(srv, require_grounding={"vendor"}, cache=cache).predict_with_confidence(DOC)
    assert first.attempts == 2 and first.usage.calls == 2
    srv.add_response(ANSWER)
    again = make(srv, require_grounding={"vendor"}, cache=cache).predict_with_confidence(DOC)
    # the same first request is not served the made-up answer from the cache: it goes to the LM again
    assert again.usage.cache_hits == 0 and again.usage.calls == 1 and again.attempts == 1
    assert srv.request_count == 3 and again.data.vendor == "Müller & Söhne"


def test_chunked_document_spans_are_offsets_in_the_whole_document(srv: FakeLLMServer) -> None:
    class Contract(BaseModel):
        party: str | None = None
        penalty: str | None = None

    def answer(body: dict) -> dict:
        text = body["messages"][-1]["content"]
        return {
            "party": "Globex Café" if "Party: Globex Café" in text else None,
            "penalty": "5 % pro Woche" if "PENALTY" in text else None,
        }

    srv.set_responder(answer)
    filler = "\n\n".join(f"Paragraph {i}: the parties agree on ordinary terms number {i}." for i in range(400))
    doc = "Party: Globex Café\n\n" + filler + "\n\nPENALTY: 5 % pro Woche."
    res = make(srv, Contract, context_window=2048, max_tokens=200).predict_with_confidence(doc)
    assert res.extra["chunks"] > 3
    assert {p: [doc[a:b] for a, b in s] for p, s in res.spans.items()} == {
        "party": ["Globex Café"], "penalty": ["5 % pro Woche"],
    }
    assert res.spans["penalty"][0][0] > 20_000  # an offset in the whole document, not in its chunk
    # each field's confidence comes from the chunk that gave its value
    assert res.field_confidences == {"party": 1.0, "penalty": 1.0} and res.ungrounded == []


# -- calibration through the prompter, saved and loaded ------------------------------------------------


class City(BaseModel):
    city: str | None = None
    country: str | None = None


def labelled(n: int, seed: int) -> list[Example]:
    rng = random.Random(seed)
    cities = [("Paris", "France"), ("Köln", "Germany"), ("Osaka", "Japan"), ("Lima", "Peru")]
    out = []
    for i in range(n):
        city, country = cities[rng.randrange(len(cities))]
        text = f"#{i}: weather in {city}, {country}"
        out.append(Example(text=text, expected_output={"city": city, "country": country}))
    return out


def city_lm(body: dict[str, object]) -> Reply:
    """Right on most documents; on every third, a made-up city (ungrounded) — so the grounding signal is
    what tells right from wrong, as it would be for a real hallucination."""
    text = last_user_text(body)
    number = int(text[1 : text.index(":")])
    city, country = text.split("weather in ")[1].split(", ")
    answer = {"city": city if number % 3 else "Atlantis", "country": country}
    return Reply(answer)


def test_calibrate_fits_saves_and_loads_the_calibrator(srv: FakeLLMServer, tmp_path: Path) -> None:
    srv.set_responder(city_lm)
    p = make(srv, City)
    report = p.calibrate(labelled(30, 0))
    assert p.calibrator is report.calibrator and report.n_fields == 60 and 0 < report.positives < 60
    assert report.auroc > 0.9 and report.ece_after < report.ece_before
    good = p.predict_with_confidence("#1: weather in Lima, Peru")
    bad = p.predict_with_confidence("#3: weather in Lima, Peru")
    assert good.calibrated and good.field_confidences["city"] > 0.9
    assert bad.ungrounded == ["city"] and bad.field_confidences["city"] < 0.1

    p.save(tmp_path / "saved")
    assert (tmp_path / "saved" / "calibrator.json").is_file()
    loaded = Prompter.load(tmp_path / "saved", model=City, api_base=srv.base_url, api_key="k")
    assert loaded.calibrator == p.calibrator
    again = loaded.predict_with_confidence("#3: weather in Lima, Peru")
    assert again.field_confidences == bad.field_confidences


def test_a_hostile_calibrator_file_is_a_persistence_error(srv: FakeLLMServer, tmp_path: Path) -> None:
    srv.set_responder(city_lm)
    p = make(srv, City)
    p.calibrate(labelled(30, 0))
    p.save(tmp_path / "saved")
    path = tmp_path / "saved" / "calibrator.json"
    for hostile in (
        {"format": "dspydantic.calibrator", "format_version": 1, "kind": "callable", "params": {"f": "os.system"}},
        {"format": "dspydantic.calibrator", "format_version": 1, "kind": "platt", "params": {"a": [1], "b": 0}},
        "gASVKAAAAAAAAACMBXBvc2l4lIwGc3lzdGVtlJOUjAJpZJSFlFKULg==",  # a pickle, base64
    ):
        path.write_text(json.dumps(hostile))
        with pytest.raises(PersistenceError, match="calibrator"):
            Prompter.load(tmp_path / "saved", model=City, api_base=srv.base_url, api_key="k")
    path.write_bytes(b"\x80\x04\x95 not json")
    with pytest.raises(PersistenceError):
        Prompter.load(tmp_path / "saved", model=City, api_base=srv.base_url, api_key="k")


def test_require_grounding_is_saved_with_the_prompter(srv: FakeLLMServer, tmp_path: Path) -> None:
    p = make(srv, City, require_grounding={"city"}, confidence_samples=3, sample_temperature=1.1)
    p.save(tmp_path / "s")
    loaded = Prompter.load(tmp_path / "s", model=City, api_base=srv.base_url, api_key="k")
    assert loaded.require_grounding == ["city"]
    assert loaded.answer_check.plan.require_grounding == frozenset({"city"})
    assert loaded.confidence_samples == 3 and loaded.sample_temperature == 1.1
    # read strictly: a hostile value is a PersistenceError naming the setting, before any backend is built
    manifest = tmp_path / "s" / "dspydantic.json"
    good = manifest.read_text()
    for key, value in (("sample_temperature", "hot"), ("confidence_samples", 10**6), ("require_grounding", {"a": 1})):
        data = json.loads(good)
        data["lm"]["settings"][key] = value
        manifest.write_text(json.dumps(data))
        with pytest.raises(PersistenceError, match=key):
            Prompter.load(tmp_path / "s", model=City, api_base=srv.base_url, api_key="k")


def test_optimize_fits_the_calibrator_on_the_validation_split_only(srv: FakeLLMServer) -> None:
    srv.set_responder(city_lm)
    p = make(srv, City)
    examples = labelled(40, 1)
    result = p.optimize(examples, optimizer="bootstrap", max_bootstrapped_demos=1, max_labeled_demos=1,
                        train_split=0.5, seed=0)
    assert result.calibration is not None, result.calibration_note
    assert p.calibrator is result.calibration.calibrator
    # fitted on exactly the validation examples (2 fields each), none of the training ones
    assert result.calibration.n_examples == result.n_val == 20 and result.calibration.n_fields == 40
    assert "validation" in (result.calibration_note or "")
    few = make(srv, City)
    small = few.optimize(labelled(6, 2), optimizer="bootstrap", max_bootstrapped_demos=1, seed=0)
    assert few.calibrator is None and "fewer than" in (small.calibration_note or "")


def test_optimize_samples_only_where_confidence_is_measured(srv: FakeLLMServer) -> None:
    srv.set_responder(city_lm)
    p = make(srv, City, confidence_samples=1)
    result = p.optimize(labelled(12, 3), optimizer="bootstrap", max_bootstrapped_demos=1, max_labeled_demos=1,
                        train_split=0.5, seed=0)
    val_docs = {str(o.example.text) for o in result.candidate_report.outcomes}
    sampled = [last_user_text(r.body) for r in srv.requests if "seed" in r.body]
    plain = {last_user_text(r.body) for r in srv.requests if "seed" not in r.body}
    # the validation scoring samples (its signals are what the calibrator sees); the student, run on the
    # training documents, does not pay confidence_samples extra calls per prediction
    assert sampled and set(sampled) <= val_docs
    assert plain - val_docs, "the student ran on training documents"
    assert all(r.body["temperature"] == 0.7 for r in srv.requests if "seed" in r.body)


# --------------------------------------------------------------------------------------------------
# the real local model
# --------------------------------------------------------------------------------------------------


@pytest.mark.local
def test_local_model_spans_logprobs_and_field_confidences() -> None:
    pytest.importorskip("llama_cpp")
    from dspydantic.lm import LMRequest
    from dspydantic.lm.settings import ModelSettings

    class Shop(BaseModel):
        name: str = Field(description="the shop's name as written")
        city: str = Field(description="the city")
        fax: str | None = Field(default=None, description="the fax number, null if not given")

    p = Prompter(Shop, "local", max_tokens=80, require_grounding={"fax"})
    doc = "Die Bäckerei Schäfer in Köln öffnet um 7 Uhr. 🎉"
    res = p.predict_with_confidence(doc)
    assert res.confidence_source == "logprobs" and set(res.field_confidences) == {"name", "city", "fax"}
    assert res.field_signals["city"].n_tokens >= 1 and res.field_signals["city"].min_logprob is not None
    assert all(0.0 <= c <= 1.0 for c in res.field_confidences.values())
    assert res.confidence == min(res.field_confidences.values())
    for path, spans in res.spans.items():  # each span is where grounding finds that value in the document
        assert set(spans) <= set(ground(getattr(res.data, path), doc).spans)
    if res.data.city == "Köln":
        start = doc.index("Köln")
        assert res.spans["city"] == [(start, start + 4)]
    # require_grounding: a fax number the document does not contain cannot survive
    assert res.data.fax is None or ground(res.data.fax, doc).grounded

    # the backend's token texts spell its answer exactly (multi-byte characters included)
    out = p.backend.complete(LMRequest(
        messages=[{"role": "user", "content": "Reply with JSON: the city of Köln and the word 東京"}],
        json_schema={"type": "object", "properties": {"city": {"type": "string"}, "word": {"type": "string"}},
                     "required": ["city", "word"]},
        settings=ModelSettings(max_tokens=40), logprobs=True,
    ))
    assert out.token_texts is not None and out.token_logprobs is not None
    assert "".join(out.token_texts) == out.text and len(out.token_texts) == len(out.token_logprobs)


class _AbsentByDefault:
    """A backend that asks for "absent is an answer" by default, as the embedded model does (delegates the rest)."""

    absent_is_an_answer = True

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def test_a_backends_default_grounding_nulls_what_the_document_does_not_say(srv: FakeLLMServer, tmp_path: Path) -> None:
    made_up = {**ANSWER, "note": "paid by card", "address": {"city": "Paris", "street": "Straße 5"}}
    srv.set_responder(lambda body: made_up)
    p = make(srv)
    assert p.require_grounding is None and p.grounded_fields is False  # an API model: no default grounding
    assert p.run(DOC).note == "paid by card"
    p.backend = _AbsentByDefault(p.backend)
    assert p.grounded_fields == ["address.city", "address.street", "note"]  # the optional free strings
    out = p.run(DOC)
    assert out.note is None and out.address is not None and out.address.city is None
    assert out.address.street == "Straße 5" and out.vendor == "Müller & Söhne"  # found in DOC: kept
    explicit = make(srv, require_grounding=False)
    explicit.backend = _AbsentByDefault(explicit.backend)
    assert explicit.grounded_fields is False and explicit.run(DOC).note == "paid by card"  # an explicit choice wins
    # saved: the default is not written (the loading backend's default applies); an explicit False is
    p.save(tmp_path / "default")
    explicit.save(tmp_path / "explicit")
    kw = {"model": Invoice, "model_id": "openai/fake", "api_base": srv.base_url, "api_key": "k"}
    assert Prompter.load(tmp_path / "default", **kw).require_grounding is None
    assert Prompter.load(tmp_path / "explicit", **kw).require_grounding is False
    make(srv, require_grounding=True).save(tmp_path / "all")  # True was refused by the settings' length bound
    assert Prompter.load(tmp_path / "all", **kw).require_grounding is True
