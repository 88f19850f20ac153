"""``dspydantic extract``, ``optimize`` and ``evaluate`` as subprocesses on real files, against the fake LLM."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from dspydantic import Prompter
from dspydantic.testing import FakeLLMServer, example_for_schema, message_text

from ._support import make_pdf, make_png, run_cli

pytest.importorskip("pypdf")
pytest.importorskip("PIL")


class Invoice(BaseModel):
    vendor: str = Field(description="Company that issued the invoice")
    total: float


def _doc_text(body: dict[str, Any]) -> str:
    return " ".join(message_text(m.get("content")) for m in body["messages"])


def responder(body: dict[str, Any]) -> Any:
    schema = body["response_format"]["json_schema"]["schema"]
    value = example_for_schema(schema)
    text = _doc_text(body)
    for vendor in ("Acme", "Globex", "Initech", "Umbrella"):
        if vendor in text:
            value["vendor"] = vendor
    if any(p.get("type") == "image_url" for m in body["messages"] if isinstance(m.get("content"), list)
           for p in m["content"]):
        value["vendor"] = "FromImage"
    return value


@pytest.fixture()
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        srv.set_responder(responder)
        yield srv


@pytest.fixture()
def prompter_dir(llm: FakeLLMServer, tmp_path: Path) -> Path:
    path = tmp_path / "invoice_prompter"
    Prompter(model=Invoice, model_id="openai/gpt-4o-mini", api_base=llm.base_url, retry_backoff=0).save(path)
    return path


@pytest.fixture()
def docs(tmp_path: Path) -> Path:
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("Invoice from Acme, total 10 EUR")
    (d / "sub" / "b.md").write_text("Bill from Globex: 20 USD")
    (d / "c.pdf").write_bytes(make_pdf("Invoice from Initech GmbH, total 99 EUR, due 2024-01-31"))
    (d / "d.png").write_bytes(make_png())
    (d / "broken.pdf").write_bytes(b"%PDF-1.4\n this is not really a pdf \x00\x01")
    (d / ".hidden.txt").write_text("Invoice from Umbrella")
    return d


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_extract_a_directory_of_text_pdf_image_and_a_corrupt_file(
    docs: Path, prompter_dir: Path, llm: FakeLLMServer, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    r = run_cli("extract", str(docs), "--prompter", str(prompter_dir),
                "--api-base", llm.base_url, "--out", str(out), "--workers", "3")
    assert r.returncode == 1  # one input failed
    recs = {Path(x["id"]).name: x for x in records(out)}
    assert set(recs) == {"a.txt", "b.md", "c.pdf", "d.png", "broken.pdf"}  # the hidden file is skipped
    assert recs["a.txt"]["data"] == {"vendor": "Acme", "total": 1.0} and recs["a.txt"]["ok"]
    assert recs["b.md"]["data"]["vendor"] == "Globex"
    assert recs["c.pdf"]["data"]["vendor"] == "Initech" and recs["c.pdf"]["kind"] == "pdf"  # its text layer
    assert recs["d.png"]["data"]["vendor"] == "FromImage" and recs["d.png"]["kind"] == "image"
    bad = recs["broken.pdf"]
    assert not bad["ok"] and bad["error"]["type"] and "broken.pdf" in bad["error"]["message"]
    assert recs["a.txt"]["usage"]["calls"] == 1 and recs["a.txt"]["usage"]["cost_usd"] > 0
    assert len(recs["a.txt"]["sha256"]) == 64
    assert "1 failed" in r.stderr and "broken.pdf" in r.stderr  # the summary
    assert llm.request_count == 4


def test_extract_resumes_by_content_hash(docs: Path, prompter_dir: Path, llm: FakeLLMServer, tmp_path: Path) -> None:
    (docs / "broken.pdf").unlink()
    out = tmp_path / "out.jsonl"
    first = run_cli("extract", str(docs), "--prompter", str(prompter_dir),
                    "--api-base", llm.base_url, "--out", str(out))
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""  # quiet when not on a terminal and nothing failed
    calls = llm.request_count
    assert calls == 4
    (docs / "e.txt").write_text("Invoice from Umbrella, 5 CHF")
    (docs / "a-copy.txt").write_text("Invoice from Acme, total 10 EUR")  # same content as a.txt: already done
    again = run_cli("extract", str(docs), "--prompter", str(prompter_dir),
                    "--api-base", llm.base_url, "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert llm.request_count == calls + 1  # only e.txt ran
    assert [Path(x["id"]).name for x in records(out)][-1] == "e.txt"
    assert len(records(out)) == 5


def test_extract_retries_failed_inputs_on_the_next_run(prompter_dir: Path, llm: FakeLLMServer, tmp_path: Path) -> None:
    doc = tmp_path / "x.txt"
    doc.write_text("Invoice from Acme")
    out = tmp_path / "out.jsonl"
    llm.add_response("no json", times=3)  # every attempt of the first run fails
    r = run_cli("extract", str(doc), "--prompter", str(prompter_dir),
                "--api-base", llm.base_url, "--out", str(out), "--workers", "1")
    assert r.returncode == 1 and "ExtractionError" in r.stderr
    r = run_cli("extract", str(doc), "--prompter", str(prompter_dir), "--api-base", llm.base_url, "--out", str(out))
    assert r.returncode == 0
    assert [x["ok"] for x in records(out)] == [False, True]


def test_extract_json_lines_from_stdin_to_stdout(prompter_dir: Path, llm: FakeLLMServer) -> None:
    lines = '"Invoice from Acme"\n{"id": "inv-7", "text": "Bill from Globex"}\n\nnot json\n{"colour": "red"}\n'
    r = run_cli("extract", "-", "--prompter", str(prompter_dir), "--api-base", llm.base_url, "--out", "-", stdin=lines)
    assert r.returncode == 1
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    by_id = {x["id"]: x for x in recs}
    assert by_id["stdin:1"]["data"]["vendor"] == "Acme"
    assert by_id["inv-7"]["data"]["vendor"] == "Globex"
    assert not by_id["stdin:4"]["ok"] and "not JSON" in by_id["stdin:4"]["error"]["message"]
    assert not by_id["stdin:5"]["ok"] and "colour" in by_id["stdin:5"]["error"]["message"]
    assert "2 failed" in r.stderr


def test_extract_glob_into_a_directory(docs: Path, prompter_dir: Path, llm: FakeLLMServer, tmp_path: Path) -> None:
    out = tmp_path / "results"
    r = run_cli("extract", str(docs), "--glob", "*.txt", "--prompter", str(prompter_dir),
                "--api-base", llm.base_url, "--out", str(out) + "/")
    assert r.returncode == 0, r.stderr
    files = sorted(out.glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("a-")
    assert json.loads(files[0].read_text())["data"]["vendor"] == "Acme"
    pattern = str(docs / "**" / "*.md")
    r = run_cli("extract", pattern, "--prompter", str(prompter_dir), "--api-base", llm.base_url, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert len(list(out.glob("*.json"))) == 2
    r = run_cli("extract", pattern, "--prompter", str(prompter_dir),
                "--api-base", llm.base_url, "--out", str(out))  # resumed: nothing to do
    assert r.returncode == 0 and len(list(out.glob("*.json"))) == 2


def test_extract_usage_errors_exit_2(prompter_dir: Path, tmp_path: Path) -> None:
    r = run_cli("extract", str(tmp_path / "missing.txt"), "--prompter", str(prompter_dir), "--out", "-")
    assert r.returncode == 2 and "no such file" in r.stderr
    r = run_cli("extract", str(tmp_path), "--prompter", str(tmp_path / "nope"), "--out", "-")
    assert r.returncode == 2 and "error" in r.stderr
    r = run_cli("serve", f"bad name={prompter_dir}")
    assert r.returncode == 2 and "part of the URL" in r.stderr
    r = run_cli("serve", str(tmp_path / "nope"))
    assert r.returncode == 2 and "not a saved prompter directory" in r.stderr


EXAMPLES = [
    {"text": f"Invoice from {v}, total {n} EUR", "expected_output": {"vendor": v, "total": 1.0}}
    for v, n in [("Acme", 1), ("Globex", 2), ("Initech", 3), ("Umbrella", 4), ("Acme", 5), ("Globex", 6)]
]


def test_optimize_then_evaluate_from_the_command_line(llm: FakeLLMServer, tmp_path: Path) -> None:
    (tmp_path / "mymodels.py").write_text(textwrap.dedent("""
        from pydantic import BaseModel, Field

        class Invoice(BaseModel):
            vendor: str = Field(description="Company that issued the invoice")
            total: float
    """))
    examples = tmp_path / "examples.jsonl"
    examples.write_text("\n".join(json.dumps(e) for e in EXAMPLES) + "\n")
    out = tmp_path / "saved"
    r = run_cli("optimize", str(examples), "--model", "mymodels:Invoice", "--model-id", "openai/gpt-4o-mini",
                "--api-base", llm.base_url, "--out", str(out), "--optimizer", "bootstrap", "--budget", "40",
                "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["optimizer"] == "bootstrap" and result["lm_calls"] <= 40
    assert (out / "dspydantic.json").exists()
    r = run_cli("evaluate", str(examples), "--prompter", str(out), "--api-base", llm.base_url, "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["n"] == 6 and set(report["per_field"]) == {"vendor", "total"}
    assert report["per_field"]["vendor"] == 1.0 and report["score"] == 1.0
    r = run_cli("evaluate", str(examples), "--prompter", str(out), "--api-base", llm.base_url, cwd=tmp_path)
    assert r.returncode == 0 and "vendor" in r.stdout and "1.000" in r.stdout
    r = run_cli("optimize", str(examples), "--model", "mymodels:Nope", "--model-id", "openai/x", "--out",
                str(out), cwd=tmp_path)
    assert r.returncode == 2 and "Nope" in r.stderr


def test_help_lists_every_command() -> None:
    r = run_cli("--help")
    assert r.returncode == 0
    for command in ("demo", "extract", "optimize", "evaluate", "serve"):
        assert command in r.stdout
    r = run_cli("serve", "--help")
    assert "--workers" in r.stdout and "DSPYDANTIC_API_TOKEN" in r.stdout


def test_help_imports_no_heavy_dependency() -> None:
    """``dspydantic --help`` stays cheap: the command modules import their features only when they run."""
    code = (
        "import sys\n"
        "from dspydantic.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ['fastapi', 'uvicorn', 'prometheus_client', 'opentelemetry', 'dspy', 'litellm', 'rich', 'httpx',\n"
        "         'pypdf', 'schemathesis', 'dspydantic.integrations']\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    import subprocess
    import sys

    from ._support import cli_env

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=cli_env(), check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_extract_html_writes_a_review_page_per_answer(
    docs: Path, prompter_dir: Path, llm: FakeLLMServer, tmp_path: Path
) -> None:
    """``--html DIR``: each answer's review page (its grounded spans highlighted in the text it was read from:
    a text file's content, a PDF's text layer), named in its record; a failed input gets none."""
    out, pages = tmp_path / "out.jsonl", tmp_path / "pages"
    r = run_cli("extract", str(docs), "--prompter", str(prompter_dir), "--api-base", llm.base_url, "--out", str(out),
                "--html", str(pages))
    assert r.returncode == 1  # broken.pdf
    recs = {Path(x["id"]).name: x for x in records(out)}
    assert "review_html" not in recs["broken.pdf"]
    assert sorted(Path(x["review_html"]).name.split("-")[0] for x in recs.values() if x["ok"]) == ["a", "b", "c", "d"]
    assert sorted(p.name for p in pages.iterdir()) == sorted(Path(x["review_html"]).name for x in recs.values()
                                                             if x["ok"])
    text = (docs / "a.txt").read_text()
    start = text.index("Acme")
    assert recs["a.txt"]["spans"] == {"vendor": [[start, start + 4]]} and recs["a.txt"]["ungrounded"] == []
    page = Path(recs["a.txt"]["review_html"]).read_text()
    assert f'data-fields="vendor" data-start="{start}" data-end="{start + 4}"' in page and ">Acme</mark>" in page
    pdf_page = Path(recs["c.pdf"]["review_html"]).read_text()
    assert ">Initech</mark>" in pdf_page  # grounded in the PDF's text layer
    image = recs["d.png"]
    # an image has no text to ground in: nothing is highlighted, and nothing is called a hallucination
    assert image["ungrounded"] == [] and image["spans"] == {}
    assert "<mark" not in Path(image["review_html"]).read_text()


def test_progress_bar_on_a_terminal_stays_off_the_records(
    docs: Path, prompter_dir: Path, llm: FakeLLMServer, tmp_path: Path
) -> None:
    """stderr on a terminal (a pty): rich draws the progress bar there; the records on stdout stay pure JSON."""
    import os
    import pty
    import subprocess
    import sys

    from ._support import cli_env

    (docs / "broken.pdf").unlink()
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dspydantic", "extract", str(docs), "--prompter", str(prompter_dir), "--out", "-",
             "--workers", "1", "--api-base", llm.base_url],
            stdout=subprocess.PIPE, stderr=slave, env={**cli_env(), "TERM": "xterm", "COLUMNS": "100"},
            timeout=120,
        )
        os.close(slave)
        terminal = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed and everything was read
                break
            if not chunk:
                break
            terminal += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["ok"] for line in lines), terminal  # no bar in the records
    shown = terminal.decode(errors="replace")
    assert "extract" in shown and "4/4" in shown  # the bar, drawn on the terminal
    assert "4 extracted, 0 skipped" in shown  # and the summary
