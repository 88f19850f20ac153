"""The fuzzy step of grounding is skipped, without importing rapidfuzz, only where it could not succeed."""

from __future__ import annotations

import random
import subprocess
import sys

from dspydantic.confidence.grounding import _may_reach

from ._support import SRC


def test_the_bound_never_skips_a_window_rapidfuzz_would_accept() -> None:
    from rapidfuzz import fuzz

    rng = random.Random(7)
    alphabet = "abcde fgh-0123"
    skipped = 0
    for _ in range(4000):
        source = "".join(rng.choice(alphabet) for _ in range(rng.randint(4, 60)))
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(4, 12)))
        if rng.random() < 0.5:  # a near-copy of a window of the source
            start = rng.randrange(0, max(1, len(source) - len(value)))
            chars = list(source[start : start + len(value)])
            if chars:
                chars[rng.randrange(len(chars))] = rng.choice(alphabet)
            value = "".join(chars) or value
        for threshold in (60.0, 85.0, 95.0):
            found = fuzz.partial_ratio_alignment(value, source, score_cutoff=threshold)
            if not _may_reach(value, source, threshold):
                skipped += 1
                assert found is None, (value, source, threshold, found)
    assert skipped > 1000  # the bound does skip (else this test proves nothing)


def test_a_value_with_nothing_in_common_is_not_grounded_without_loading_rapidfuzz() -> None:
    code = (
        "import sys\n"
        "from dspydantic.confidence.grounding import ground\n"
        "g = ground('2024-03-01', 'Invoice 5 from Acme GmbH, total 5,50 EUR')\n"
        "print(g.method, 'rapidfuzz' in sys.modules)\n"
        "g = ground('Acme GmbX', 'Invoice 5 from Acme GmbH, total 5,50 EUR')\n"
        "print(g.method, 'rapidfuzz' in sys.modules)\n"
    )
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.split("\n")[:2]
    assert first.split()[1] == "False"  # not found, and no fuzzy search was needed to say so
    assert second == "fuzzy True"  # a near miss still goes through the fuzzy search

