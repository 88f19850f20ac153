"""The evaluator classes at dspydantic 0.1's module path (``import dspydantic.evaluators``).

A thin re-export of :mod:`dspydantic.optimize.evaluators`, where they live; ``dspydantic.evaluators.config``
holds 0.1's registry names (``BaseEvaluator``, ``EvaluatorFactory``, ``EVALUATOR_REGISTRY``). 0.1's
one-module-per-class paths (``dspydantic.evaluators.levenshtein`` ...) are this module under those names.
"""

from __future__ import annotations

import sys

from ..optimize.evaluators import *  # noqa: F403  (the same names, at 0.1's path)
from ..optimize.evaluators import __all__ as __all__

# 0.1 had one module per evaluator class: ``from dspydantic.evaluators.levenshtein import ...`` finds this one
for _name in ("string_check", "levenshtein", "text_similarity", "score_judge", "label_model_grader", "python_code",
              "predefined_score"):
    sys.modules.setdefault(f"{__name__}.{_name}", sys.modules[__name__])
    globals()[_name] = sys.modules[__name__]
del _name
