"""The public API is typed for the user's model: mypy (run through its API on a small user module) sees the
user's class come back from ``Prompter[T]``'s verbs and ``Prompter.load(..., model=M)``, and reports a wrong
assignment. The ``py.typed`` marker ships in the package, so type checkers read the installed package's hints."""

from __future__ import annotations

import re
import textwrap
import tomllib
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"

# ``# R:<type>``: what mypy must reveal on that line; ``# E:<code>``: the error mypy must report there (no other line
# may have one). Builtins are written without ``builtins.`` (newer mypy leaves it out).
USER_CODE = textwrap.dedent(
    """
    from pydantic import BaseModel

    from dspydantic import Demo, ExtractionResult, Prompter, PromptState


    class Invoice(BaseModel):
        vendor: str
        total: float


    p = Prompter(model=Invoice, model_id="openai/gpt-4o-mini")
    reveal_type(p)  # R:P[user.Invoice]
    reveal_type(p.run("text"))  # R:user.Invoice
    reveal_type(p("text"))  # R:user.Invoice
    reveal_type(p.predict(text="text"))  # R:user.Invoice
    reveal_type(p.run("text").vendor)  # R:str
    reveal_type(p.predict_with_confidence("text"))  # R:ER[user.Invoice]
    reveal_type(p.predict_with_confidence("text").data)  # R:user.Invoice
    reveal_type(p.predict_batch(["a", "b"]))  # R:list[user.Invoice]
    reveal_type(p.predict_batch(["a"], on_error="return"))  # R:list[user.Invoice | Exception]
    reveal_type(p.predict_batch(["a"], with_confidence=True))  # R:list[ER[user.Invoice]]
    reveal_type(p.predict_batch(["a"], 2, "return", with_confidence=True))  # R:list[ER[user.Invoice] | Exception]
    reveal_type(Prompter.load("./saved", model=Invoice))  # R:P[user.Invoice]
    reveal_type(Prompter.load("./saved"))  # R:P[pydantic.main.BaseModel]
    reveal_type(Prompter(model_id="openai/gpt-4o-mini").run("text"))  # R:pydantic.main.BaseModel


    async def main() -> None:
        reveal_type(await p.apredict("text"))  # R:user.Invoice
        reveal_type(await p.arun(text="text"))  # R:user.Invoice
        reveal_type(await p.apredict_with_confidence("text"))  # R:ER[user.Invoice]
        reveal_type(await p.apredict_batch(["a"]))  # R:list[user.Invoice]
        reveal_type(await p.apredict_batch(["a"], on_error="return"))  # R:list[user.Invoice | Exception]


    def takes_any_prompter(prompter: Prompter) -> None: ...


    takes_any_prompter(p)  # a Prompter[Invoice] is a Prompter (of some model)
    state: PromptState = p.state
    demos: tuple[Demo, ...] = p.demos
    result: ExtractionResult[Invoice] = p.predict_with_confidence("text")
    invoice: Invoice = p.run("text")
    wrong: int = p.run("text")  # E:assignment
    p.run("text").no_such_field  # E:attr-defined
    """
)


def _run_mypy(tmp_path: Path) -> list[str]:
    (tmp_path / "user.py").write_text(USER_CODE, encoding="utf-8")
    config = tmp_path / "mypy.ini"
    # this checkout's sources win over any installed copy; errors inside dspydantic are its own lint's business
    config.write_text(
        f"[mypy]\nmypy_path = {SRC}\nfollow_imports = silent\nignore_missing_imports = True\n"
        f"cache_dir = {tmp_path / 'cache'}\n",
        encoding="utf-8",
    )
    stdout, stderr, _status = mypy_api.run(
        ["--config-file", str(config), "--show-error-codes", "--no-error-summary", str(tmp_path / "user.py")]
    )
    assert not stderr.strip(), stderr
    return stdout.splitlines()


def _expand(expected: str) -> str:
    """The expected types are written short: ``P[...]`` and ``ER[...]`` are the Prompter and ExtractionResult."""
    expected = re.sub(r"\bER\[", "dspydantic._result.ExtractionResult[", expected)
    return re.sub(r"\bP\[", "dspydantic._prompter.Prompter[", expected)


def test_the_users_model_comes_back_from_every_verb(tmp_path: Path) -> None:
    lines = USER_CODE.splitlines()
    expected_reveals = {n: _expand(m[1]) for n, line in enumerate(lines, 1) if (m := re.search(r"# R:(.+)", line))}
    expected_errors = {n: m.group(1) for n, line in enumerate(lines, 1) if (m := re.search(r"# E:(\S+)", line))}
    reveals: dict[int, str] = {}
    errors: dict[int, str] = {}
    for out in _run_mypy(tmp_path):
        m = re.match(r".*user\.py:(\d+): (note|error): (.*)$", out)
        assert m, f"unexpected mypy output: {out}"
        line, kind, text = int(m.group(1)), m.group(2), m.group(3)
        if kind == "note":
            r = re.match(r'Revealed type is "(.*)"', text)
            if r:
                reveals[line] = r.group(1).replace("builtins.", "")  # spelled with or without, by version
        else:
            code = re.search(r"\[([a-z-]+)\]$", text)
            errors[line] = code.group(1) if code else text
    assert reveals == expected_reveals
    # exactly the wrong lines are errors (and for the right reason): everything else type-checks
    assert errors == expected_errors


def test_py_typed_marker_ships_in_the_package() -> None:
    assert (SRC / "dspydantic" / "py.typed").is_file()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    wheel = config["tool"]["hatch"]["build"]["targets"]["wheel"]
    # hatch puts every file of a listed package directory in the wheel unless excluded
    assert "src/dspydantic" in wheel["packages"]
    assert not any("typed" in pattern for pattern in wheel.get("exclude", []))
