"""README and docs code blocks run as written, against the fake server (OPENAI_BASE_URL points at it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dspydantic.testing import FakeLLMServer

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(path: Path) -> list[str]:
    return _BLOCK.findall(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("doc", [d for d in DOCS if python_blocks(d)], ids=lambda d: d.name)
def test_doc_blocks_run_as_written(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = python_blocks(doc)
    with FakeLLMServer() as srv:
        srv.respond_from_schema()
        monkeypatch.setenv("OPENAI_BASE_URL", srv.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-docs-test")
        monkeypatch.chdir(tmp_path)
        namespace: dict[str, object] = {"__name__": "__docs__"}
        for i, block in enumerate(blocks):
            try:
                exec(compile(block, f"{doc.name}[block {i}]", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"{doc.name} block {i} failed: {exc!r}\n{block}") from exc
        assert srv.request_count > 0
