"""The verdict: the project's rules first, Math-Verify as a second opinion only where the rules may miss.

The rules (``equivalence.compare_answers``) are strict and explain themselves; Math-Verify
(``rollout.verifier.mathverify``) extracts answers from prose and compares equations,
inequalities, matrices and sets well, but is lenient in ways a policy can exploit. So:

1. **Rules say correct** → correct (reason ``exact``, ``numeric``, ``symbolic``, ``choice``,
   ``text``). Several different boxes in the final paragraph are one list answer: right when the
   gold is that list, and wrong (``ambiguous``) when only the last box matches a single gold —
   hedging between candidates is not answering.
2. **Rules say wrong and are sure** → wrong, Math-Verify is not asked. Sure means the answer was
   extracted cleanly (a box, a display block, or a phrase / last line that is math, not prose) and
   the rules decided by shape (``structure``: a part of the gold, a tuple against a set), by
   choice label (``choice``), or by comparing plain numbers or words (``mismatch``).
3. **Otherwise** (SymPy said different or could not parse, or the answer sat in prose) Math-Verify
   judges the same answer — the boxes when there are boxes, else the text after the think block.
   It saying correct gives ``math_verify``; but when the rules had compared plain numbers or
   words (their tolerance and percent rules are the authority), or when the answer Math-Verify
   found in the prose fails the rules by shape, choice or value, the verdict is wrong with the
   reason ``ambiguous``, counted like every reason. The rules get a soft time limit in the worker;
   past it the pool retries the item in a fresh worker with Math-Verify alone.

``decide_in_parent`` does steps 1–2 without SymPy (microseconds, in the pool's parent);
``None`` means a worker must run ``verify_answer``, which may run SymPy and Math-Verify and so
only ever runs inside the pool's killable workers.
"""

from __future__ import annotations

import re
import signal
import threading

from rollout.verifier.equivalence import NeedsSympy, Verdict, compare_answers
from rollout.verifier.normalize import clean_latex, parse_plain_number

CLEAN_HOWS = ("boxed", "display")
RULES_TIMEOUT = "rules_timeout"  # internal: the pool retries the item with Math-Verify alone
SURE_WRONG = ("structure", "choice", "too_long", "ambiguous")
_COMMANDS_AND_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mbox|operatorname)\s*\{[^{}]*\}|\\[A-Za-z]+")
_PROSE = re.compile(r"[A-Za-z]{3,}")
_SENTENCE_END = re.compile(
    r"(?<=[.!?])\s+|\n|(?<=\$\$)|(?<=\\\])|\s+(?=(?:Therefore|Thus|Hence|So|Finally)\b)"
)
_NUMBER_TOKEN = re.compile(r"\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def is_clean(answer: str | None, how: str) -> bool:
    """The extracted answer is math, not a sentence (so the rules' reading of it can be trusted)."""
    if answer is None:
        return False
    if how in CLEAN_HOWS:
        return True
    return not _PROSE.search(_COMMANDS_AND_TEXT.sub(" ", answer))


def rule_verdict(answer: str, boxes: tuple[str, ...], gold: str, choices, *, allow_sympy: bool):
    """The rules' verdict on the answer, with several final boxes also tried as one list answer."""
    verdict = compare_answers(answer, gold, choices, allow_sympy=allow_sympy)
    if len(boxes) < 2:
        return verdict
    joined = compare_answers(", ".join(boxes), gold, choices, allow_sympy=allow_sympy)
    if joined.correct:  # "\boxed{1} and \boxed{2}" against the gold "1, 2"
        return joined
    if verdict.correct:  # "\boxed{3} or \boxed{4}": hedging between answers is not answering
        return Verdict(False, "ambiguous")
    return verdict


def _sure_wrong(verdict: Verdict, clean: bool) -> bool:
    return clean and (verdict.reason in SURE_WRONG or verdict.reason == "mismatch")


def decide_in_parent(answer: str, how: str, boxes: tuple[str, ...], gold: str, choices) -> Verdict | None:
    """Steps 1–2 of the module docstring without SymPy; ``None`` when a worker must decide."""
    try:
        verdict = rule_verdict(answer, boxes, gold, choices, allow_sympy=False)
    except NeedsSympy:
        return None
    if verdict.correct or _sure_wrong(verdict, is_clean(answer, how)):
        return verdict
    return None


def verify_answer(answer: str, gold: str, choices=None, context: dict | None = None) -> Verdict:
    """The full verdict (module docstring). Runs SymPy and Math-Verify: call it in a killable worker."""
    context = context or {}
    how, boxes, body = context.get("how", "boxed"), tuple(context.get("boxes", ())), context.get("body")
    clean = is_clean(answer, how)
    try:
        numbers_only = rule_verdict(answer, boxes, gold, choices, allow_sympy=False)
    except NeedsSympy:
        numbers_only = None
    if numbers_only is not None:
        verdict = numbers_only
    elif context.get("skip_rules"):  # a retry after the rules overran: Math-Verify alone decides
        verdict = Verdict(False, "unparsable")
    else:
        verdict = _rules_with_sympy(answer, boxes, gold, choices, context.get("rules_limit_s"))
        if verdict.reason == RULES_TIMEOUT:
            return verdict  # this process was interrupted inside SymPy: the pool retires it and retries
    if verdict.correct or (verdict.reason in SURE_WRONG and clean):
        return verdict
    agrees, found = second_opinion(answer, how if not clean else "boxed", boxes, body, gold)
    if not agrees:
        return verdict
    if numbers_only is not None and numbers_only.reason == "mismatch" and clean:
        return Verdict(False, "ambiguous")  # plain numbers or words differ by the rules; Math-Verify disagrees
    if found is not None and (_rules_object(found, gold, choices) or not _one_number_concludes(body, found)):
        return Verdict(False, "ambiguous")  # what Math-Verify found in the prose is not clearly the answer
    return Verdict(True, "math_verify")


def _one_number_concludes(body: str | None, found: str) -> bool:
    """A bare number Math-Verify picked from prose counts only when the last sentence with a number
    has just that one ("… the game is 2/3."), not "x is 3 when y is 7" or "x = 1, 2"."""
    if body is None or parse_plain_number(clean_latex(found)) is None:
        return True  # LaTeX it found, or nothing to check against
    sentences = [part for part in _SENTENCE_END.split(body) if _NUMBER_TOKEN.search(part)]
    return bool(sentences) and len(_NUMBER_TOKEN.findall(sentences[-1])) == 1


def _rules_object(found: str, gold: str, choices) -> bool:
    """The rules, without SymPy, are sure that the answer Math-Verify found is wrong (shape, choice, value)."""
    try:
        verdict = compare_answers(found, gold, choices, allow_sympy=False)
    except (NeedsSympy, Exception, RecursionError):
        return False
    return not verdict.correct and (verdict.reason in SURE_WRONG or verdict.reason == "mismatch")


class _SoftLimit(BaseException):  # not swallowed by SymPy's own "except Exception"
    pass


def _raise_soft_limit(signum, frame):
    raise _SoftLimit


def _rules_with_sympy(answer: str, boxes: tuple[str, ...], gold: str, choices, limit_s: float | None) -> Verdict:
    """The rules with SymPy under a soft limit (the pool gives half its time limit).

    Past it the verdict is ``RULES_TIMEOUT``: the pool retires this worker — interrupted SymPy or
    parser state is not trusted again — and retries the item with ``skip_rules`` in a fresh one,
    where Math-Verify gets its turn under the hard limit. The alarm only works in a main thread."""
    use_alarm = limit_s and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not use_alarm:
        return rule_verdict(answer, boxes, gold, choices, allow_sympy=True)
    previous = signal.signal(signal.SIGALRM, _raise_soft_limit)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        return rule_verdict(answer, boxes, gold, choices, allow_sympy=True)
    except _SoftLimit:
        return Verdict(False, RULES_TIMEOUT)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def second_opinion(
    answer: str | None, how: str, boxes: tuple[str, ...], body: str | None, gold: str
) -> tuple[bool, str | None]:
    """Math-Verify on the same answer — the boxes when boxed (or the answer, when the rules' extraction
    is clean math), else the text after the think block — and, when it extracted by itself, the
    answer it found (as LaTeX)."""
    from rollout.verifier.mathverify import mathverify_equal, parse_gold, parse_prediction

    if how == "boxed" or not body:
        shown = " ".join(f"$\\boxed{{{box}}}$" for box in (boxes or (answer or "",)))
        return mathverify_equal(parse_gold(gold), parse_prediction(shown)), None
    prediction = parse_prediction(body)
    found = prediction[-1] if prediction and isinstance(prediction[-1], str) else None
    return mathverify_equal(parse_gold(gold), prediction), found
