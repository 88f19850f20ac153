"""The accept/reject decision of an optimization: a pure function of validation scores."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Verdict", "decide"]


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
) -> Verdict:
    """Adopt the candidate only if it beats the fair baseline and the original prompts as they were (when
    those were scored: the baseline has demos they lack); else keep the original prompts, or with
    ``fallback="baseline"`` serve the baseline if it scored above the original.

    Scores are validation scores, ``None`` when not scored (the budget ran out). ``fresh`` is False when
    the candidate is the baseline or the original prompts themselves (the optimizer proposed nothing new);
    ``added`` is how many plain training demos the baseline has that the original prompts lack.
    """
    if baseline is None:
        return Verdict(False, False, "the budget ran out while scoring the baseline; nothing changed", float("nan"))
    beats_baseline = candidate is not None and candidate > baseline + min_improvement
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
    else:
        message = f"not accepted: the candidate scored {candidate:.3f}, not above the baseline {baseline:.3f}; {kept}"
    if added > 0 and not serve_baseline:
        message += f" (the baseline had {added} plain training demo(s), the candidate's demo budget"
        if baseline_better:
            message += "; to serve it as scored: prompter.state = result.baseline_state, or fallback='baseline'"
        message += ")"
    served = original if original is not None and not serve_baseline else baseline
    return Verdict(False, serve_baseline, message, served)
