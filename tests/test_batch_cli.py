"""``dspydantic batch submit|status|fetch`` as a subprocess, on real files, against FakeLLMServer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from dspydantic import Prompter
from dspydantic.testing import FakeLLMServer, Fault, last_user_text

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-cli-SECRET-abcdef0123"


class Invoice(BaseModel):
    vendor: str
    total: float


def run_cli(*args: str, cwd: Path, endpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if endpoint:
        env["OPENAI_BASE_URL"] = endpoint  # load() never uses the endpoint a saved directory names
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OPENAI_API_KEY"] = SECRET
    env["DSPYDANTIC_BATCH_DIR"] = str(cwd / "jobs")
    code = "import sys; from dspydantic.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


def test_submit_status_fetch_on_files(tmp_path: Path) -> None:
    def respond(body: dict) -> object:
        text = last_user_text(body)
        if "broken" in text:
            return Fault(status=500, body="upstream failure")
        return {"vendor": text.split()[2], "total": float(text.split()[-1])}

    with FakeLLMServer() as srv:
        srv.set_responder(respond)
        srv.batches.duration = 0.5
        Prompter(model=Invoice, model_id="openai/fake-batch", api_base=srv.base_url).save(tmp_path / "prompter")
        inputs = tmp_path / "inputs.jsonl"
        rows = ["Invoice from Acme total 10", {"text": "Invoice from Globex total 20"}, "a broken scan",
                "Invoice from Initech total 5"]
        inputs.write_text("".join(json.dumps(r) + "\n" for r in rows))

        submitted = run_cli("batch", "submit", "prompter", str(inputs), "--name", "q3", "--job", "job.json",
                            cwd=tmp_path, endpoint=srv.base_url)
        assert submitted.returncode == 0, submitted.stderr
        assert "4 inputs, 4 requests (4 uploaded, 0 reused, 0 cached)" in submitted.stdout
        (batch_id,) = srv.batches.batch_ids
        assert batch_id in submitted.stdout and (tmp_path / "job.json").is_file()
        assert srv.requests[0].headers["authorization"] == f"Bearer {SECRET}"  # the key came from the env
        assert SECRET not in (tmp_path / "job.json").read_text()

        status = run_cli("batch", "status", "job.json", cwd=tmp_path, endpoint=srv.base_url)
        assert status.returncode == 0, status.stderr
        assert status.stdout.startswith(f"{batch_id}: ") and f"  {batch_id}: " in status.stdout

        fetched = run_cli("batch", "fetch", "job.json", "--wait", "--poll", "0.1", "--out", "out.jsonl",
                          cwd=tmp_path, endpoint=srv.base_url)
        assert fetched.returncode == 0, fetched.stderr
        lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert [x["index"] for x in lines] == [0, 1, 2, 3]
        assert lines[0]["data"] == {"vendor": "Acme", "total": 10.0}
        assert lines[1]["data"] == {"vendor": "Globex", "total": 20.0}
        assert lines[2]["error"]["type"] == "BatchJobItemError" and lines[2]["error"]["reason"] == "provider"
        assert "upstream failure" in lines[2]["error"]["message"]
        assert lines[3]["data"] == {"vendor": "Initech", "total": 5.0}
        assert "4 results: 3 ok, 1 failed" in fetched.stderr
        assert len(srv.batches.uploads) == 1  # status and fetch only read the job


def test_a_missing_job_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    result = run_cli("batch", "status", "no-such-job", cwd=tmp_path)
    assert result.returncode == 1
    assert "ConfigurationError: no batch job record" in result.stderr and "Traceback" not in result.stderr
