"""Is an extracted answer equal to the gold answer? (the ``verify`` of Eq. 4, DESIGN §1.1).

``compare_answers(pred, gold)`` walks the answer trees of ``normalize.parse_answer`` and returns a
``Verdict(correct, reason)``. The rules, each pinned by ``tests/rollout/verifier_cases.jsonl``:

* **Exact**: equal after normalisation (see ``normalize``) → correct.
* **Numbers**: two exact numbers (integers, ``\\frac{a}{b}``, ``a/b``) must be equal exactly, so
  ``123456789`` ≠ ``123456790`` however large. When either side is written with a decimal point
  or an exponent (``0.333``, ``1.2e3``, ``1.2\\times10^{3}``) the tolerance is *relative*:
  ``|a-b| ≤ 1e-4 · max(|a|,|b|)``; against an exact zero, ``|other| ≤ 1e-12``. Relative, not
  absolute, so ``6.6e-34`` ≠ ``6.7e-34`` and ``1.00001e20`` = ``1e20``.
* **Percent**: a side written with ``%`` may be read as its number or as a hundredth of it:
  ``50\\%`` = ``50`` = ``0.5``; without ``%`` on either side ``0.5`` ≠ ``50``.
* **Degrees**: ``30^\\circ`` = ``30``, and = ``\\frac{\\pi}{6}`` (a degree side may be read in radians).
* **Multiple choice**: a single-letter gold (``B``, ``(B)``) is compared with the letter the
  prediction starts with (``(b) 12``, ``B.``, ``\\text{B}``), case-insensitively; with ``choices``
  (a list, A first, or a letter → text dict) the option text counts for its letter both ways.
  Against a non-letter gold, a leading label is dropped: ``(A) 12`` = ``12``.
* **Structures**: tuples / intervals are ordered and two-item brackets must match exactly
  (``(1,2)`` ≠ ``[1,2)``); sets, bare lists, ``\\pm`` expansions and unions are unordered.
  A bare list equals a parenthesised tuple with the same order.
* **Text**: answers that are words compare case-insensitively.
* **Symbolic** (SymPy via ``latex2sympy2_extended``): numeric constants are evaluated to 40 digits
  (equal within 1e-25 relative when both are exact, else the 1e-4 rule); expressions with free
  symbols are equal if ``expand(a-b) == 0`` or they agree at five rational points (else
  ``simplify``); equations are equal up to a constant factor (``2y=4x+2`` = ``y=2x+1``).

SymPy can hang, so ``compare_answers(..., allow_sympy=False)`` raises ``NeedsSympy`` instead of
calling it: the pool decides cheap cases in the parent and sends only those to killable workers.
SymPy and the LaTeX parser are imported on first use, never at module import.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from fractions import Fraction

from rollout.verifier.normalize import (
    Group,
    Number,
    Scalar,
    clean_latex,
    make_scalar,
    parse_answer,
    parse_plain_number,
)

REL_TOL = Fraction(1, 10_000)
ABS_TOL_AT_ZERO = Fraction(1, 10**12)
EXACT_REL_TOL = 1e-25
MAX_SYMPY_CHARS = 1000
MAX_ITEMS = 64
RANDOM_POINTS = 5

_GOLD_LETTER = re.compile(r"\(?([A-Za-z])\)?\.?")
_PRED_LETTER = re.compile(
    r"(?:(?:option|choice|answer)\s*:?\s*)?\(?([A-Za-z])\)?(?=$|[\s.:),])", re.IGNORECASE
)
_CHOICE_LABEL = re.compile(r"(?:\(([A-Ja-j])\)|([A-J])[.:)])\s*(?P<rest>\S.*)", re.DOTALL)
_DECIMAL = re.compile(r"\d\.\d|(?<![\w\\])\.\d|\d[eE][-+]?\d")


class NeedsSympy(Exception):
    """Raised by ``compare_answers(..., allow_sympy=False)`` when only SymPy can decide."""


@dataclass(frozen=True)
class Verdict:
    """Whether the answers are equivalent and which rule decided (exact, numeric, choice, …)."""

    correct: bool
    reason: str


def compare_answers(pred: str | None, gold: str | None, choices=None, *, allow_sympy: bool = True) -> Verdict:
    """Compare an extracted answer with the gold answer by the rules in the module docstring.

    Runs SymPy without a time limit: call it through ``rollout.verifier.pool`` for untrusted input.
    """
    if gold is None or not str(gold).strip():
        return Verdict(False, "empty_gold")
    if pred is None or not str(pred).strip():
        return Verdict(False, "no_answer")
    pred, gold = str(pred), str(gold)
    if clean_latex(pred) == clean_latex(gold):
        return Verdict(True, "exact")
    by_choice = _compare_choices(pred, gold, choices, allow_sympy)
    if by_choice is not None:
        return by_choice
    if max(len(pred), len(gold)) > MAX_SYMPY_CHARS:
        return Verdict(False, "too_long")
    comparer = _Comparer(allow_sympy)
    correct = comparer.nodes(parse_answer(pred), parse_answer(gold))
    return Verdict(correct, comparer.reason(correct))


# ---------------------------------------------------------------- multiple choice


def _plain(text: str) -> str:
    text = re.sub(r"\\(?:text|textbf|textrm|mathrm|mathbf)\s*\{([^{}]*)\}", r"\1", text)
    return text.replace("$", "").replace("**", "").strip()


def _choice_map(choices) -> dict[str, str]:
    if not choices:
        return {}
    if isinstance(choices, dict):
        return {str(key).strip().upper(): str(value) for key, value in choices.items()}
    return {chr(ord("A") + index): str(value) for index, value in enumerate(choices)}


def _compare_choices(pred: str, gold: str, choices, allow_sympy: bool) -> Verdict | None:
    options = _choice_map(choices)
    gold_letter = _GOLD_LETTER.fullmatch(_plain(gold))
    pred_letter = _PRED_LETTER.match(_plain(pred))
    if gold_letter is not None:
        letter = gold_letter.group(1).upper()
        if pred_letter is not None:
            return Verdict(pred_letter.group(1).upper() == letter, "choice")
        if letter in options:
            by_text = compare_answers(pred, options[letter], allow_sympy=allow_sympy)
            return Verdict(by_text.correct, "choice")
        return Verdict(False, "mismatch")
    if pred_letter is None:
        return None
    label = pred_letter.group(1).upper()
    if label in options and not _plain(pred)[pred_letter.end() :].strip(" ."):
        by_text = compare_answers(options[label], gold, allow_sympy=allow_sympy)
        return Verdict(by_text.correct, "choice")
    labelled = _CHOICE_LABEL.fullmatch(_plain(pred))
    if labelled is not None:  # "(A) 12" against the gold "12": the option text counts
        return compare_answers(labelled.group("rest"), gold, choices, allow_sympy=allow_sympy)
    return None


# ---------------------------------------------------------------- structures and scalars


def _as_group(node: Scalar | Group) -> Group:
    return node if isinstance(node, Group) else Group("list", (node,))


class _Comparer:
    """Walks two answer trees; remembers which kinds of check it used, for the reason."""

    def __init__(self, allow_sympy: bool) -> None:
        self.allow_sympy = allow_sympy
        self.used: set[str] = set()

    def reason(self, correct: bool) -> str:
        if not correct:
            return "unparsable" if "unparsable" in self.used else "mismatch"
        for method in ("symbolic", "numeric", "text"):
            if method in self.used:
                return method
        return "exact"

    def nodes(self, pred: Scalar | Group, gold: Scalar | Group) -> bool:
        if isinstance(pred, Scalar) and isinstance(gold, Scalar):
            return self.scalars(pred, gold)
        pred, gold = _as_group(pred), _as_group(gold)
        if max(len(pred.items), len(gold.items)) > MAX_ITEMS:
            return False  # only an exact match (checked first) decides answers this long
        if pred.kind == "bracket" or gold.kind == "bracket":
            return self._brackets(pred, gold)
        if (pred.kind == "union") != (gold.kind == "union"):
            return False
        return self._unordered(pred.items, gold.items)

    def _brackets(self, pred: Group, gold: Group) -> bool:
        if len(pred.items) != len(gold.items):
            return False
        if pred.kind == gold.kind == "bracket":
            if len(pred.items) == 2 and (pred.open, pred.close) != (gold.open, gold.close):
                return False  # intervals: open and closed ends differ
        else:
            bracket, other = (pred, gold) if pred.kind == "bracket" else (gold, pred)
            if other.kind != "list" or bracket.open not in ("(", "\\langle"):
                return False
        return all(self.nodes(p, g) for p, g in zip(pred.items, gold.items))

    def _unordered(self, pred_items: tuple, gold_items: tuple) -> bool:
        if not pred_items or not gold_items:
            return not pred_items and not gold_items
        matched_gold: set[int] = set()
        for pred_item in pred_items:
            hits = [index for index, gold_item in enumerate(gold_items) if self.nodes(pred_item, gold_item)]
            if not hits:
                return False
            matched_gold.update(hits)
        return len(matched_gold) == len(gold_items)

    def scalars(self, pred: Scalar, gold: Scalar) -> bool:
        if pred.text == gold.text:
            return True
        if not pred.text or not gold.text:
            return False
        if "=" in pred.text and gold.equation and "=" not in gold.text:
            gold = make_scalar(gold.equation)  # "y=2x+1" vs "2y=4x+2": compare whole equations
        elif "=" in gold.text and pred.equation and "=" not in pred.text:
            pred = make_scalar(pred.equation)
        pred_number, gold_number = parse_plain_number(pred.text), parse_plain_number(gold.text)
        if pred_number is not None and gold_number is not None:
            self.used.add("numeric")
            return _numbers_equal(pred_number, gold_number, pred, gold)
        if _is_words(pred.text) or _is_words(gold.text):
            self.used.add("text")
            return pred.text.lower() == gold.text.lower()
        if not self.allow_sympy:
            raise NeedsSympy(f"{pred.text!r} vs {gold.text!r}")
        self.used.add("symbolic")
        equal = _sympy_scalars_equal(pred, gold)
        if equal is None:
            self.used.add("unparsable")
        return bool(equal)


def _is_words(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z '\-]*", text) and re.search(r"[A-Za-z]{3,}", text))


def _value_readings(number: Number, scalar: Scalar, other: Scalar) -> list[Fraction | float]:
    if scalar.percent and not other.percent:
        return [number.value, number.value / 100]
    return [number.value]


def _numbers_equal(pred: Number, gold: Number, pred_scalar: Scalar, gold_scalar: Scalar) -> bool:
    tolerant = pred.inexact or gold.inexact
    for a in _value_readings(pred, pred_scalar, gold_scalar):
        for b in _value_readings(gold, gold_scalar, pred_scalar):
            if a == b or (tolerant and close_enough(a, b)):
                return True
    return False


def close_enough(a: Fraction | float, b: Fraction | float) -> bool:
    """The tolerance rule for inexact numbers (module docstring): relative 1e-4, 1e-12 at zero."""
    if isinstance(a, float) or isinstance(b, float):
        if a != a or b != b or abs(a) == float("inf") or abs(b) == float("inf"):
            return a == b
        a, b = Fraction(a), Fraction(b)
    if a == 0 or b == 0:
        return abs(a - b) <= ABS_TOL_AT_ZERO
    return abs(a - b) <= REL_TOL * max(abs(a), abs(b))


# ---------------------------------------------------------------- SymPy


@functools.lru_cache(maxsize=4096)  # a gold answer is parsed once per worker, not once per trajectory
def _to_sympy(text: str):
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy
    from latex2sympy2_extended.math_normalization import NormalizationConfig

    normalization = NormalizationConfig(
        basic_latex=True, units=False, malformed_operators=True, nits=False, boxed="none", equations=False
    )
    conversion = ConversionConfig(lowercase_symbols=False, interpret_simple_eq_as_assignment=False)
    try:
        expr = latex2sympy(text, normalization_config=normalization, conversion_config=conversion)
        return expr.doit() if hasattr(expr, "doit") else expr  # the parser leaves sums unevaluated
    except (Exception, RecursionError):
        return None


def _sympy_readings(expr, scalar: Scalar, other: Scalar) -> list:
    import sympy

    readings = [expr]
    if scalar.percent and not other.percent:
        readings.append(expr / 100)
    if scalar.degree and not other.degree:
        readings.append(expr * sympy.pi / 180)
    return readings


def _sympy_scalars_equal(pred: Scalar, gold: Scalar) -> bool | None:
    """``None`` when either side does not parse."""
    pred_expr, gold_expr = _to_sympy(pred.text), _to_sympy(gold.text)
    if pred_expr is None or gold_expr is None:
        return None
    tolerant = bool(_DECIMAL.search(pred.text) or _DECIMAL.search(gold.text))
    for a in _sympy_readings(pred_expr, pred, gold):
        for b in _sympy_readings(gold_expr, gold, pred):
            if sympy_equal(a, b, tolerant):
                return True
    return False


def sympy_equal(a, b, tolerant: bool) -> bool:
    """Equality of two SymPy objects by the symbolic rules in the module docstring."""
    import sympy
    from sympy.core.relational import Equality, Relational

    if a == b:
        return True
    if isinstance(a, Relational) or isinstance(b, Relational):
        return isinstance(a, Equality) and isinstance(b, Equality) and _equations_equal(a, b)
    if isinstance(a, sympy.MatrixBase) or isinstance(b, sympy.MatrixBase):
        same_shape = (
            isinstance(a, sympy.MatrixBase) and isinstance(b, sympy.MatrixBase) and a.shape == b.shape
        )
        return same_shape and all(sympy_equal(x, y, tolerant) for x, y in zip(a, b))
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return False
    difference = a - b
    if not difference.free_symbols:
        return _constants_equal(a, b, tolerant)
    return _expressions_equal(a, b, difference, tolerant)


def _numbers_close(x, y, tolerant: bool) -> bool | None:
    """Compare two evaluated SymPy numbers; ``None`` when either is not a finite number."""
    import sympy

    if not (x.is_number and y.is_number) or x.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        return None
    error, scale = abs(sympy.N(x - y, 40)), max(abs(x), abs(y))
    if not (error.is_number and scale.is_number) or error.is_comparable is False:
        return None
    if scale == 0 or x == 0 or y == 0:
        return bool(error <= (1e-12 if tolerant else 1e-30))
    return bool(error <= (float(REL_TOL) if tolerant else EXACT_REL_TOL) * scale)


def _constants_equal(a, b, tolerant: bool) -> bool:
    import sympy

    difference = sympy.expand(a - b)
    if difference == 0:
        return True
    if difference.is_Rational and not tolerant:
        return False
    verdict = _numbers_close(sympy.N(a, 40), sympy.N(b, 40), tolerant)
    if verdict is None:
        return sympy.simplify(difference) == 0
    return verdict


def _expressions_equal(a, b, difference, tolerant: bool) -> bool:
    import sympy

    if sympy.expand(difference) == 0:
        return True
    symbols = sorted(difference.free_symbols, key=str)
    rng = random.Random(0)
    agreed = 0
    for _ in range(RANDOM_POINTS):
        point = {symbol: sympy.Rational(rng.randint(11, 199), 97) for symbol in symbols}
        verdict = _numbers_close(sympy.N(a.subs(point), 40), sympy.N(b.subs(point), 40), tolerant)
        if verdict is False:
            return False
        agreed += verdict is True
    if agreed >= 3:
        return True
    return sympy.simplify(difference) == 0


def _equations_equal(a, b) -> bool:
    import sympy

    left, right = a.lhs - a.rhs, b.lhs - b.rhs
    if right == 0:
        return left == 0
    ratio = sympy.cancel(left / right)
    if not ratio.free_symbols:
        return ratio != 0
    ratio = sympy.simplify(ratio)
    return not ratio.free_symbols and ratio != 0
