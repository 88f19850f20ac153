from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dspydantic.testing import FakeLLMServer

# LiteLLM would try to download its model price list at first use; there is no network here.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


@pytest.fixture()
def srv() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own default cache directory: no test reads another's cached answers."""
    monkeypatch.setenv("DSPYDANTIC_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
