"""Math-Verify (``math-verify`` on PyPI) as a second opinion, called without its own timeouts.

Math-Verify extracts an answer from free text (answer phrases, the last ``$…$`` / ``\\[…\\]``
block, ``\\boxed{}``, bare numbers) and compares SymPy objects (equations, inequalities, sets,
intervals, matrices). Its timeouts use ``SIGALRM``, which fails outside the main thread and
cannot stop every hang, so here both ``parse`` and ``verify`` run with ``parsing_timeout=None``
and ``timeout_seconds=None``: these functions must only be called inside the killable workers of
``rollout.verifier.pool``, which enforce the time limit.

* ``parse_gold`` / ``parse_prediction`` — Math-Verify's parse (a gold answer without ``$`` is
  wrapped in ``$…$`` first, since bare LaTeX golds do not parse otherwise);
* ``mathverify_equal`` — its verdict for an already parsed pair;
* ``mathverify_compare`` — Math-Verify alone, as its README uses it (the baseline of
  ``sophia-profile verifier --against math-verify``, run in a ``VerifierPool(raw=True)``).
"""

from __future__ import annotations

import functools
import logging

_QUIET = False


def _quiet() -> None:
    """Math-Verify warns once per process that its timeouts are off; the pool enforces time instead."""
    global _QUIET
    if not _QUIET:
        for name in ("math_verify", "math_verify.grader", "math_verify.parser", "latex2sympy2_extended"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
        _QUIET = True


def gold_for_parsing(gold: str) -> str:
    """A gold answer as Math-Verify's parser needs it: LaTeX wrapped in ``$…$`` unless delimited."""
    text = str(gold).strip()
    if "$" in text or "\\boxed" in text or "\\(" in text or "\\[" in text:
        return text
    return f"${text}$"


@functools.lru_cache(maxsize=4096)  # a gold answer is parsed once per worker, not once per trajectory
def parse_gold(gold: str) -> tuple:
    from math_verify import parse

    _quiet()
    return tuple(parse(gold_for_parsing(gold), parsing_timeout=None))


@functools.lru_cache(maxsize=256)
def parse_prediction(text: str) -> tuple:
    from math_verify import parse

    _quiet()
    return tuple(parse(text, parsing_timeout=None))


def mathverify_equal(gold: tuple, prediction: tuple) -> bool:
    """Math-Verify's ``verify`` on parsed answers, its timeout off (the pool's worker is killable)."""
    from math_verify import verify

    if not gold or not prediction:
        return False
    return bool(verify(list(gold), list(prediction), timeout_seconds=None))


def mathverify_compare(prediction: str, gold: str, choices=None, context=None) -> tuple[bool, str]:
    """Math-Verify alone, as its README uses it: ``verify(parse(gold), parse(prediction))``.

    The pool's check signature: with ``VerifierPool(raw=True)`` ``prediction`` is the whole response.
    """
    correct = mathverify_equal(parse_gold(gold), parse_prediction(prediction))
    return correct, "math_verify" if correct else "mismatch"
