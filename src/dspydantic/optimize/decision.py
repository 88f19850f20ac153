"""The accept/reject decision of an optimization: a pure function of validation scores, and how sure it is
(:class:`Paired`: the candidate against the baseline, example by example)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Paired", "Verdict", "decide", "paired"]


@dataclass(frozen=True)
class Paired:
    """Candidate minus baseline on the same validation examples: the mean difference of their per-example
    scores (the difference of the two validation scores), its standard error (``None`` below 2 examples),
    and on how many examples the candidate scored higher / lower."""

    n: int
    mean: float
    stderr: float | None
    wins: int
    losses: int

    def describe(self) -> str:
        spread = f" ± {self.stderr:.3f} (standard error)" if self.stderr is not None else ""
        ties = self.n - self.wins - self.losses
        return (
            f"candidate - baseline {self.mean:+.3f}{spread} over {self.n} validation example(s): higher on "
            f"{self.wins}, lower on {self.losses}, equal on {ties}"
        )


def paired(baseline: Mapping[int, float], candidate: Mapping[int, float]) -> Paired | None:
    """The paired difference over the examples both were scored on (``None`` when there is none)."""
    common = sorted(set(baseline) & set(candidate))
    if not common:
        return None
    diffs = [candidate[i] - baseline[i] for i in common]
    n = len(diffs)
    mean = sum(diffs) / n
    stderr = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else None
    return Paired(n, mean, stderr, sum(d > 0 for d in diffs), sum(d < 0 for d in diffs))


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    serve_baseline: bool
    message: str
    served_score: float  # validation score of what the Prompter serves (the baseline's when unknown)


def decide(
    baseline: float | None,
    candidate: float | None,
    *,
    original: float | None = None,
    fresh: bool = True,
    min_improvement: float = 0.0,
    fallback: str = "original",
    added: int = 0,
    difference: Paired | None = None,
    min_standard_errors: float = 0.0,
) -> Verdict:
    """Adopt the candidate only if it beats the fair baseline and the original prompts as they were (when
    those were scored: the baseline has demos they lack); else keep the original prompts, or with
    ``fallback="baseline"`` serve the baseline if it scored above the original.

    Scores are validation scores, ``None`` when not scored (the budget ran out). ``fresh`` is False when
    the candidate is the baseline or the original prompts themselves (the optimizer proposed nothing new);
    ``added`` is how many plain training demos the baseline has that the original prompts lack.
    ``difference`` is the candidate against the baseline example by example: with ``min_standard_errors``
    > 0 the candidate must beat the baseline by that many standard errors of it as well.
    """
    if baseline is None:
        return Verdict(False, False, "the budget ran out while scoring the baseline; nothing changed", float("nan"))
    margin = min_improvement
    if min_standard_errors > 0 and difference is not None and difference.stderr is not None:
        margin = max(margin, min_standard_errors * difference.stderr)
    beats_baseline = candidate is not None and candidate > baseline + margin
    beats_original = candidate is not None and (original is None or candidate > original + min_improvement)
    fresh = fresh and candidate is not None
    if fresh and beats_baseline and beats_original and candidate is not None:
        message = f"accepted: validation score {baseline:.3f} -> {candidate:.3f}"
        if original is not None:
            message += f" (the original prompts as they were: {original:.3f})"
        if added > 0:
            message += f" (the baseline had {added} plain training demo(s), the candidate's demo budget)"
        return Verdict(True, False, message, candidate)
    baseline_better = original is None or baseline > original
    serve_baseline = added > 0 and fallback == "baseline" and baseline_better
    if serve_baseline:
        kept = f"serving the baseline as scored: the original prompts with {added} plain training demo(s)"
    elif added > 0 and fallback == "baseline" and original is not None:
        kept = f"kept the original prompts: they scored {original:.3f}, not below the baseline"
    else:
        kept = "kept the original prompts"
    if candidate is None:
        message = f"the candidate could not be scored within the budget; {kept}"
    elif not fresh:
        message = f"the optimizer proposed nothing new; {kept}"
    elif beats_baseline and original is not None:
        message = (
            f"not accepted: the candidate scored {candidate:.3f}, above the baseline {baseline:.3f} "
            f"but not above the original prompts as they were ({original:.3f}); {kept}"
        )
    elif candidate > baseline + min_improvement:  # above the baseline, not by the standard errors asked for
        message = (
            f"not accepted: the candidate scored {candidate:.3f}, above the baseline {baseline:.3f} by less than "
            f"{min_standard_errors:g} standard error(s) of the difference ({margin:.3f}); {kept}"
        )
    else:
        message = f"not accepted: the candidate scored {candidate:.3f}, not above the baseline {baseline:.3f}; {kept}"
    if added > 0 and not serve_baseline:
        message += f" (the baseline had {added} plain training demo(s), the candidate's demo budget"
        if baseline_better:
            message += "; to serve it as scored: prompter.state = result.baseline_state, or fallback='baseline'"
        message += ")"
    served = original if original is not None and not serve_baseline else baseline
    return Verdict(False, serve_baseline, message, served)
