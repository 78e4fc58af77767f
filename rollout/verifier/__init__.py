"""The answer verifier: SOPHIA's outcome reward R(y) = 1 iff verify(extract(y), a) (Eq. 4, docs/ALGORITHM.md §1.1).

* ``extract`` — the final answer of a trajectory (``\\boxed{}``, answer phrases, display blocks,
  last line; ``<think>`` blocks skipped, an unclosed one is unfinished: ``is_unfinished_think``);
* ``normalize`` / ``equivalence`` — the project's strict rules (numbers with a relative tolerance,
  fractions, percentages, intervals, tuples, sets, ratios, ``\\pm``, units, choices, SymPy);
* ``mathverify`` — Math-Verify (PyPI ``math-verify``) as a second opinion, its own timeouts off;
* ``decide`` — which of the two decides (rules first; Math-Verify only where the rules may miss);
* ``pool`` — every SymPy / Math-Verify check in a killable worker process under a hard time limit;
* ``check`` — ``sophia-rollout check --in FILE.jsonl``.

The score stage calls ``VerifierPool.verify_batch`` (or ``verify_batch``); every ``Result`` has
``correct``, ``extracted`` and a ``reason`` (docs/VERIFIER.md lists them). Importing this package
is light: SymPy, the LaTeX parser and Math-Verify load only inside the checks that need them.
"""

from rollout.verifier.equivalence import NeedsSympy, Verdict, compare_answers
from rollout.verifier.extract import Extraction, extract_answer, is_unfinished_think, unwrap_gold
from rollout.verifier.pool import Result, VerifierPool, verify_batch

__all__ = [
    "Extraction",
    "NeedsSympy",
    "Result",
    "Verdict",
    "VerifierPool",
    "compare_answers",
    "extract_answer",
    "is_unfinished_think",
    "unwrap_gold",
    "verify_batch",
]
