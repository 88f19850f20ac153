"""Peers measured beside ours by ``bench/bench_runtime.py``: dspydantic 0.1.6 and instructor, each in a
virtualenv of its own under ``bench/.cache`` (0.1.6 has our import name; instructor pins ``openai``, ``jiter``
and ``rich`` below what this project's environment has, so installing it here would downgrade them).

A peer's virtualenv is created on first use with the ordinary ``python -m venv`` + ``pip install`` and reused
afterwards; if that fails (no network, no registry), the peer is skipped and the reason printed. The figures
themselves come from :data:`PEER_SCRIPT`, run by the peer's own interpreter against the same fake server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("DSPYDANTIC_BENCH_CACHE", Path(__file__).resolve().parent / ".cache"))

#: peer name -> the requirement installed into its virtualenv
PEERS = {
    "dspydantic 0.1.6": "dspydantic==0.1.6",
    "instructor": "instructor==1.17.0",
}

#: DSPy's ChatAdapter format, which 0.1.6 (``dspy.ChainOfThought`` over a ``json_output`` field) parses
def chat_adapter_answer(answer: dict[str, Any]) -> str:
    return (
        "[[ ## reasoning ## ]]\nRead the invoice.\n\n"
        f"[[ ## json_output ## ]]\n{json.dumps(answer)}\n\n[[ ## completed ## ]]"
    )


def peer_python(name: str) -> tuple[Path | None, str]:
    """The interpreter of the peer's virtualenv (created when missing), or ``None`` and why not."""
    requirement = PEERS[name]
    venv = CACHE / ("venv-" + requirement.replace("==", "-"))
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if python.exists() and stamp.exists():
        return python, "cached"
    t = time.perf_counter()
    print(f"[{name}] creating {venv} (pip install {requirement}; once, then cached)", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True,
                       timeout=300)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement],
                       check=True, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", None) or str(exc)
        last = [line for line in str(detail).splitlines() if line.strip() and not line.startswith("WARNING")]
        return None, f"could not install {requirement}: {(last[-1] if last else str(exc))[:300]}"
    stamp.write_text(requirement)
    return python, f"installed in {time.perf_counter() - t:.0f} s"


def run_peer(python: Path, peer: str, what: str, base_url: str, *args: Any, timeout: float = 300) -> dict[str, Any]:
    """Run :data:`PEER_SCRIPT` in the peer's interpreter; its last stdout line is a JSON object."""
    out = subprocess.run(
        [str(python), "-c", PEER_SCRIPT, peer, what, base_url, *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": ""},
    )
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"{peer} {what} failed: {' | '.join(tail)}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


PEER_SCRIPT = r'''
import asyncio, json, math, os, sys, time
from typing import Optional
from pydantic import BaseModel

# typing.Optional, not ``str | None``: 0.1.6 fails on PEP 604 unions (``create_optimized_model`` subscripts
# ``types.UnionType``: TypeError on every run()); the schema is the same
class Invoice(BaseModel):
    vendor: str
    invoice_number: Optional[str] = None
    total: float
    currency: str
    due: Optional[str] = None

def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")

peer, what, base = sys.argv[1], sys.argv[2], sys.argv[3]
args = [float(a) for a in sys.argv[4:]]
doc = "Invoice INV-1 from Acme GmbH, total 1.200,50 EUR, due 1 March 2024."
t_import = time.perf_counter()
if peer == "dspydantic 0.1.6":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import dspy
    import dspydantic
    assert dspydantic.__version__ == "0.1.6", dspydantic.__version__
    # 0.1.6's documented "manual DSPy configuration" (its model_id= path has no api_base); no cache
    dspy.configure(lm=dspy.LM("openai/fake", api_base=base, api_key="k", cache=False))
    p = dspydantic.Prompter(model=Invoice)

    def run(d):
        return p.run(d)

    async def arun(d):
        return await p.apredict(d)

    async def abatch(docs, workers):
        return await p.apredict_batch(docs, max_concurrency=workers, on_error="return")
else:
    import instructor
    import openai

    messages = lambda d: [{"role": "system", "content": "Extract the invoice."}, {"role": "user", "content": d}]
    client = instructor.from_openai(openai.OpenAI(base_url=base, api_key="k", max_retries=0, timeout=120.0),
                                    mode=instructor.Mode.JSON_SCHEMA)
    aclient = None

    def run(d):
        return client.chat.completions.create(model="fake", response_model=Invoice, messages=messages(d),
                                              max_retries=0, timeout=120.0)

    async def arun(d):
        global aclient
        if aclient is None:  # made inside the running loop
            sdk = openai.AsyncOpenAI(base_url=base, api_key="k", max_retries=0, timeout=120.0)
            aclient = instructor.from_openai(sdk, mode=instructor.Mode.JSON_SCHEMA)
        return await aclient.chat.completions.create(model="fake", response_model=Invoice, messages=messages(d),
                                                     max_retries=0, timeout=120.0)

    async def abatch(docs, workers):
        sem = asyncio.Semaphore(workers)

        async def one(d):
            async with sem:
                return await arun(d)

        return await asyncio.gather(*(one(d) for d in docs), return_exceptions=True)
import_s = time.perf_counter() - t_import

if what == "cpu":
    n = int(args[0])
    for _ in range(min(20, n)):
        assert isinstance(run(doc), BaseModel)
    t = time.process_time()
    for _ in range(n):
        run(doc)
    sync_s = (time.process_time() - t) / n

    async def acpu():
        for _ in range(min(20, n)):
            await arun(doc)
        t = time.process_time()
        for _ in range(n):
            await arun(doc)
        return (time.process_time() - t) / n

    async_s = asyncio.run(acpu())
    print(json.dumps({"sync_ms": sync_s * 1e3, "async_ms": async_s * 1e3, "import_s": import_s}))
elif what == "batch":
    n, workers = int(args[0]), int(args[1])
    docs = [f"Invoice {i} from Acme GmbH, total {i},50 EUR" for i in range(n)]

    async def go():
        await abatch(docs[:workers], workers)  # warm up connections / threads
        t = time.perf_counter()
        out = await abatch(docs, workers)
        took = time.perf_counter() - t
        assert len(out) == n
        failed = [o for o in out if not isinstance(o, BaseModel)]
        return took, len(failed), (f"{type(failed[0]).__name__}: {str(failed[0])[:120]}" if failed else "")

    took, failed, first = asyncio.run(go())
    print(json.dumps({"seconds": took, "peak_mb": hwm_mb(), "failed": failed, "first_error": first}))
'''
