"""The answer verifier: SOPHIA's outcome reward R(y) = 1 iff verify(extract(y), a) (Eq. 4, DESIGN §1.1).

* ``extract`` — the final answer of a trajectory (``\\boxed{}``, answer phrases, last line;
  ``<think>`` blocks skipped, an unclosed one means no answer);
* ``normalize`` / ``equivalence`` — OlympiadBench-style equivalence (numbers with a relative
  tolerance, fractions, percentages, intervals, tuples, sets, ``\\pm``, units, choices, SymPy);
* ``pool`` — every SymPy check in a killable worker process under a hard time limit;
* ``cli`` — ``sophia-rollout check --in FILE.jsonl``; ``bench`` — verifications per second.

The score stage calls ``VerifierPool.verify_batch`` (or ``verify_batch``). Importing this package
is light: SymPy and the LaTeX parser load only inside the checks that need them.
"""

from rollout.verifier.equivalence import NeedsSympy, Verdict, compare_answers
from rollout.verifier.extract import Extraction, extract_answer, unwrap_gold
from rollout.verifier.pool import Result, VerifierPool, verify_batch

__all__ = [
    "Extraction",
    "NeedsSympy",
    "Result",
    "Verdict",
    "VerifierPool",
    "compare_answers",
    "extract_answer",
    "unwrap_gold",
    "verify_batch",
]
