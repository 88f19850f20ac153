"""The house rules of docs/architecture.md, checked on the source:

* imports point down the layers (module-level imports only, parsed with ``ast``; an import inside a function is
  the documented way up, e.g. ``Prompter.optimize`` importing ``dspydantic.optimize.run`` when called);
* no module in ``src/`` is over 500 lines unless its docstring says why (a paragraph starting ``Size:``);
* ``import dspydantic`` (and the CLI and the test fakes) import neither DSPy nor any optional extra's package.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PKG = SRC / "dspydantic"

# ---------------------------------------------------------------------------------------------- the layers

#: dspydantic 0.1's import paths: thin shims at the top, which nothing else imports
COMPAT_01 = frozenset({"prompter", "types", "utils", "extractor", "module", "optimizer", "persistence", "evaluators",
                       "celery", "server", "store", "pipeline"})
#: plain data and checks every layer may use
FOUNDATION = frozenset({"errors", "_result", "_options", "_cost", "_tokens", "lm.settings"})
#: the response cache is the cache layer's store (``lm.layers.CachingBackend``): it sits with the backends
BACKEND_SIDE = frozenset({"_cache"})
#: packages of the core besides the private ``_*`` modules (``persist``: the saved-directory format, issue 16)
CORE_PACKAGES = frozenset({"confidence", "persist"})

#: layer -> the layers its modules may import at module level
MAY_IMPORT: dict[str, frozenset[str]] = {
    "foundation": frozenset({"foundation"}),
    "lm": frozenset({"foundation", "lm"}),
    "core": frozenset({"foundation", "lm", "core"}),
    "optimize": frozenset({"foundation", "lm", "core", "optimize"}),
    "integrations": frozenset({"foundation", "lm", "core", "integrations"}),
    "testing": frozenset({"foundation", "lm", "testing"}),
    "demo": frozenset({"foundation", "lm", "core", "optimize", "integrations", "demo"}),
    "cli": frozenset({"foundation", "lm", "core", "optimize", "integrations", "demo", "testing", "cli"}),
    "compat01": frozenset({"foundation", "lm", "core", "optimize", "integrations", "compat01"}),
}


def layer(module: str) -> str:
    """The layer of a module named without the ``dspydantic.`` prefix (``""`` is the package itself)."""
    top = module.split(".")[0]
    if module in FOUNDATION:
        return "foundation"
    if top == "lm" or module in BACKEND_SIDE:
        return "lm"
    if top in COMPAT_01:
        return "compat01"
    if top in ("cli", "__main__"):
        return "cli"
    if top in ("testing", "testing_batches"):
        return "testing"
    if top in ("optimize", "integrations", "demo"):
        return top
    return "core"  # the package, the extraction (_prompter, _plan, _render, _inputs, ...) and confidence/


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_level_imports(path: Path) -> set[str]:
    """The ``dspydantic`` modules ``path`` imports when it is imported (not under ``TYPE_CHECKING``, not inside
    a function), named without the ``dspydantic.`` prefix."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def absolute(node: ast.ImportFrom) -> list[str]:
        if node.level == 0:
            base = node.module or ""
            if base != "dspydantic" and not base.startswith("dspydantic."):
                return []
            base = base.removeprefix("dspydantic").lstrip(".")
        else:
            parts = package.split(".") if package else []
            parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
            base = ".".join([*parts, *([node.module] if node.module else [])])
        if node.module is None:  # from . import x, y: each may be a module
            return [f"{base}.{a.name}".lstrip(".") for a in node.names]
        return [base]

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With | ast.ClassDef):
                visit(node.body)
            elif isinstance(node, ast.Import):
                found.update(a.name.removeprefix("dspydantic").lstrip(".") for a in node.names
                             if a.name == "dspydantic" or a.name.startswith("dspydantic."))
            elif isinstance(node, ast.ImportFrom):
                found.update(absolute(node))

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def _existing(module: str) -> str:
    """``module`` as named in an import, cut to the module it is (``lm.LMBackend`` from ``from .lm import X``
    style is already the package; ``from . import _batch`` names a module)."""
    parts = module.split(".")
    while parts:
        candidate = PKG.joinpath(*parts)
        if candidate.with_suffix(".py").is_file() or (candidate / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return module


SOURCES = sorted(PKG.rglob("*.py"))


def test_the_layer_table_knows_every_package() -> None:
    tops = {module_name(p).split(".")[0] for p in SOURCES} - {""}
    unknown = {t for t in tops if layer(t) == "core" and not t.startswith("_") and t not in CORE_PACKAGES}
    assert not unknown, f"new top-level modules/packages: place them in a layer in this test and the doc: {unknown}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down_the_layers(path: Path) -> None:
    importer = module_name(path)
    mine = layer(importer)
    wrong = sorted(
        f"{imported} ({layer(imported)})"
        for imported in (_existing(m) for m in module_level_imports(path))
        if layer(imported) not in MAY_IMPORT[mine]
    )
    assert not wrong, f"{importer or 'dspydantic'} ({mine}) imports at module level: {wrong}; see docs/architecture.md"


def test_the_core_never_imports_optimize_integrations_or_the_cli_at_module_level() -> None:
    """The issue's rule in its own words (a special case of the layers above, kept readable)."""
    offenders = []
    for path in SOURCES:
        if layer(module_name(path)) not in ("core", "foundation", "lm"):
            continue
        for imported in module_level_imports(path):
            if imported.split(".")[0] in ("optimize", "integrations", "cli", "demo", "testing"):
                offenders.append(f"{module_name(path)} -> {imported}")
    assert offenders == []


def test_confidence_never_imports_the_prompter_or_its_plan() -> None:
    """``confidence/`` is the plan's answer check: it sits below the Prompter, which imports it."""
    offenders = [
        f"{module_name(path)} -> {imported}"
        for path in sorted((PKG / "confidence").rglob("*.py"))
        for imported in map(_existing, module_level_imports(path))
        if imported in ("_prompter", "_plan", "_batch", "") or imported.startswith("_persist")
    ]
    assert offenders == []


def test_the_import_parser_sees_what_it_must(tmp_path: Path) -> None:
    """The checker itself: relative and absolute forms, ``TYPE_CHECKING`` and function bodies left out."""
    probe = PKG / "_probe_for_test.py"
    assert not probe.exists()
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "import dspydantic.optimize.run\n"
        "from . import _batch\n"
        "from .integrations import routing\n"
        "from .lm.layers import CachingBackend\n"
        "try:\n    from .cli import main\nexcept ImportError:\n    pass\n"
        "if TYPE_CHECKING:\n    from .demo import Invoice\n"
        "def f():\n    from .testing import FakeBackend\n",
        encoding="utf-8",
    )
    try:
        found = {_existing(m) for m in module_level_imports(probe)}
    finally:
        probe.unlink()
    assert found == {"optimize.run", "_batch", "integrations", "lm.layers", "cli"}


# ---------------------------------------------------------------------------------------------- module size

MAX_LINES = 500
#: files over MAX_LINES without a written reason: none (a module over the limit says why in a 'Size:' paragraph)
OVER_THE_LIMIT: set[str] = set()


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def _size_reason(path: Path) -> bool:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return any(line.startswith("Size:") and len(line) > 30 for line in doc.splitlines())


def test_no_module_is_over_500_lines_without_a_reason() -> None:
    over = {str(p.relative_to(PKG)) for p in SOURCES if _lines(p) > MAX_LINES and not _size_reason(p)}
    unexplained = sorted(over - OVER_THE_LIMIT)
    assert not unexplained, (
        f"over {MAX_LINES} lines with no 'Size:' paragraph in the docstring saying why: {unexplained}"
    )
    stale = sorted(OVER_THE_LIMIT - over)
    assert not stale, f"no longer over {MAX_LINES} lines (or gone): remove them from OVER_THE_LIMIT: {stale}"


# ---------------------------------------------------------------------------------------------- cold start

#: DSPy and LiteLLM (> 1 s to import) and the packages of optional extras
HEAVY = ("dspy", "litellm", "aiohttp", "numpy", "torch", "optuna", "llama_cpp", "fastapi", "uvicorn", "sqlalchemy",
         "celery", "pypdf", "pypdfium2", "PIL", "opentelemetry", "prometheus_client")


@pytest.mark.parametrize("statement", ["import dspydantic", "import dspydantic.cli",
                                       "from dspydantic.testing import FakeBackend, FakeLLMServer",
                                       "from dspydantic import Prompter, Example, ExtractionResult, Demo, PromptState"])
def test_importing_dspydantic_imports_no_heavy_package(statement: str) -> None:
    code = (
        f"{statement}\nimport sys\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"{statement!r} imported {done.stdout.strip()}"
