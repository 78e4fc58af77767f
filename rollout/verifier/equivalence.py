"""Is an extracted answer equal to the gold answer? (the ``verify`` of Eq. 4, docs/ALGORITHM.md §1.1).

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
* **Multiple choice**: a letter in the prediction is a choice only when written as a label —
  ``(B)``, ``B.``, ``B)``, ``B:``, ``option B``, ``choice B`` or a bare ``B`` — so the article of
  "a right triangle" is not option A. A single-letter gold is a choice label when it is one of
  the known ``choices`` (a list, A first, or a letter → text dict) or, without choices, an upper-case
  letter or ``(b)``; a lower-case bare gold such as ``e`` is math (``2.71828`` and ``e^{1}`` match it).
  With choices the option text counts for its letter both ways, and leading articles are ignored.
  A gold of several labels (``AB``, ``A, C``) needs exactly that set of labels.
  Against a non-letter gold, a leading label is dropped: ``(A) 12`` = ``12``.
* **Structures**: tuples / intervals are ordered and two-item brackets must match exactly
  (``(1,2)`` ≠ ``[1,2)``); sets, bare lists, ``\\pm`` expansions and unions are unordered.
  A bare list equals a parenthesised tuple with the same order. Ratios (``a:b``) compare part by
  part; a ratio of two numbers (not a clock time) also equals its quotient. Named values compare
  with their names (``a=2, b=1`` ≠ ``a=1, b=2``). Answers of different shapes (a tuple against a set,
  two values against three, a part of an equation against the equation) are wrong with the reason
  ``structure``, which no second opinion overrides.
* **Text**: answers that are words compare case-insensitively, leading articles ignored.
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

_GOLD_LETTER = re.compile(r"(?P<paren>\()?(?P<letter>[A-Za-z])(?(paren)\))\.?")
_PRED_LABELS = (
    re.compile(r"(?:option|choice|answer)\s*:?\s*\(?(?P<letter>[A-Za-z])\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"\((?P<letter>[A-Za-z])\)"),
    re.compile(r"(?P<letter>[A-Z])[.:),](?=\s|$)"),
    re.compile(r"(?P<letter>[A-Z])(?=\s+(?:is|because|since)\b)"),
    re.compile(r"(?P<letter>[A-Za-z])$"),
)
_SEVERAL_LETTERS = re.compile(r"[A-J]{2,5}|[A-J](?:\s*(?:,|;|and|&)\s*[A-J]){1,4}")
_OTHER_LABEL = re.compile(r"(?<![A-Za-z\\])\(?[A-J]\)?(?![A-Za-z])")
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)
_OPAQUE = re.compile(r"<|>|\\[lg]eq?(?![a-z])|\\neq|\\begin|\\in(?![a-z])|\\cup|\\cap|\\setminus")
_DECIMAL_COMMA = re.compile(r"-?\d+,\d+")
_THOUSANDS_FORM = re.compile(r"-?[1-9]\d{0,2}(?:,\d{3})+")
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
    by_comma = _decimal_comma(pred.strip().strip("$").strip(), gold.strip().strip("$").strip())
    if by_comma is not None:
        return by_comma
    by_choice = _compare_choices(pred, gold, choices, allow_sympy)
    if by_choice is not None:
        return by_choice
    if max(len(pred), len(gold)) > MAX_SYMPY_CHARS:
        return Verdict(False, "too_long")
    comparer = _Comparer(allow_sympy)
    correct = comparer.nodes(parse_answer(pred), parse_answer(gold))
    return Verdict(correct, comparer.reason(correct))


def _decimal_comma(pred: str, gold: str) -> Verdict | None:
    """``1,22`` (no space, not a thousands group) against ``1.22``: the same number in a decimal-comma locale."""
    for comma, point in ((pred, gold), (gold, pred)):
        if not _DECIMAL_COMMA.fullmatch(comma) or _THOUSANDS_FORM.fullmatch(comma) or "." not in point:
            continue
        number = parse_plain_number(clean_latex(point))
        if number is not None:
            return Verdict(Fraction(comma.replace(",", ".")) == number.value, "numeric")
    return None


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


def _pred_label(pred: str) -> tuple[str, str] | None:
    """``(LETTER, rest)`` when the prediction starts with a choice label (module docstring)."""
    for pattern in _PRED_LABELS:
        match = pattern.match(pred)
        if match is not None:
            return match.group("letter").upper(), pred[match.end() :].strip(" .:")
    return None


def _gold_label(gold: str, options: dict[str, str]) -> str | None:
    match = _GOLD_LETTER.fullmatch(gold)
    if match is None:
        return None
    letter = match.group("letter")
    if options:
        return letter.upper() if letter.upper() in options else None
    return letter.upper() if letter.isupper() or match.group("paren") else None


def _letter_set(text: str, options: dict[str, str]) -> frozenset[str] | None:
    """``AB``, ``A, B`` or ``A and C``: several choice labels (multiple-answer questions)."""
    if not _SEVERAL_LETTERS.fullmatch(text):
        return None
    letters = frozenset(re.findall(r"[A-J]", text))
    if options and not letters <= options.keys():
        return None
    return letters


def _compare_choices(pred: str, gold: str, choices, allow_sympy: bool) -> Verdict | None:
    options = _choice_map(choices)
    gold_letters = _letter_set(_plain(gold), options)
    if gold_letters is not None:
        pred_letters = _letter_set(_plain(pred), options)
        single = _pred_label(_plain(pred))
        if pred_letters is None and single is not None and not single[1]:
            pred_letters = frozenset(single[0])
        return Verdict(pred_letters == gold_letters, "choice")
    plain_pred = _plain(pred)
    label = _pred_label(plain_pred)
    letter = _gold_label(_plain(gold), options)
    if letter is not None:
        if label is not None and _OTHER_LABEL.search(label[1]):
            return Verdict(False, "ambiguous")  # "(B) or (C)": hedging between options
        if label is not None:
            return Verdict(label[0] == letter, "choice")
        if letter in options:
            by_text = compare_answers(pred, options[letter], allow_sympy=allow_sympy)
            return Verdict(by_text.correct, "choice")
        return Verdict(False, "choice")
    if label is None:
        return None
    letter, rest = label
    if not rest:
        if letter not in options:
            return None  # a bare letter against a non-letter gold: it is math ("x" against "y")
        return Verdict(compare_answers(options[letter], gold, allow_sympy=allow_sympy).correct, "choice")
    return compare_answers(rest, gold, choices, allow_sympy=allow_sympy)  # "(A) 12" against "12"


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
            for problem in ("structure", "unparsable"):
                if problem in self.used:
                    return problem
            return "mismatch"
        for method in ("symbolic", "numeric", "text"):
            if method in self.used:
                return method
        return "exact"

    def nodes(self, pred: Scalar | Group, gold: Scalar | Group) -> bool:
        if isinstance(pred, Scalar) and isinstance(gold, Scalar):
            return self.scalars(pred, gold)
        if "ratio" in (getattr(pred, "kind", ""), getattr(gold, "kind", "")):
            return self._ratios(pred, gold)
        if isinstance(pred, Scalar) or isinstance(gold, Scalar):
            scalar = pred if isinstance(pred, Scalar) else gold
            if _OPAQUE.search(scalar.text):
                return self._structure(scalar)
        pred, gold = _as_group(pred), _as_group(gold)
        if max(len(pred.items), len(gold.items)) > MAX_ITEMS:
            return False  # only an exact match (checked first) decides answers this long
        if pred.kind == "bracket" or gold.kind == "bracket":
            return self._brackets(pred, gold)
        pred, gold = _intervals_as_union(pred), _intervals_as_union(gold)
        if (pred.kind == "union") != (gold.kind == "union"):
            return self._structure()
        return self._unordered(pred.items, gold.items)

    def _structure(self, *nodes: Scalar | Group) -> bool:
        """Different shapes: wrong, and no second opinion may say otherwise — unless one side is a
        relation or matrix the rules keep as one expression (``-x > -1``, ``1 \\leq |z| \\leq 2``)."""
        opaque = any(isinstance(node, Scalar) and _OPAQUE.search(node.text) for node in nodes)
        self.used.add("unparsable" if opaque else "structure")
        return False

    def _ratios(self, pred: Scalar | Group, gold: Scalar | Group) -> bool:
        both = isinstance(pred, Group) and isinstance(gold, Group)
        if both and pred.kind == gold.kind == "ratio" and len(pred.items) == len(gold.items):
            return all(self.nodes(p, g) for p, g in zip(pred.items, gold.items))
        ratio, other = (pred, gold) if getattr(pred, "kind", "") == "ratio" else (gold, pred)
        quotient = _ratio_quotient(ratio)
        if isinstance(other, Scalar) and quotient is not None:
            return self.scalars(quotient, other) if ratio is pred else self.scalars(other, quotient)
        return self._structure()

    def _brackets(self, pred: Group, gold: Group) -> bool:
        if len(pred.items) != len(gold.items):
            return self._structure()
        if pred.kind == gold.kind == "bracket":
            if len(pred.items) == 2 and (pred.open, pred.close) != (gold.open, gold.close):
                return self._structure()  # intervals: open and closed ends differ
        else:
            bracket, other = (pred, gold) if pred.kind == "bracket" else (gold, pred)
            if other.kind != "list" or bracket.open not in ("(", "\\langle"):
                return self._structure()
        return all(self.nodes(p, g) for p, g in zip(pred.items, gold.items))

    def _unordered(self, pred_items: tuple, gold_items: tuple) -> bool:
        if not pred_items or not gold_items:
            return not pred_items and not gold_items
        if len(pred_items) != len(gold_items) and (len(pred_items) == 1 or len(gold_items) == 1):
            return self._structure()  # one value of several is not the answer (nor several for one)
        matched_gold: set[int] = set()
        for pred_item in pred_items:
            hits = [index for index, gold_item in enumerate(gold_items) if self.nodes(pred_item, gold_item)]
            if not hits:
                return False
            matched_gold.update(hits)
        return len(matched_gold) == len(gold_items)

    def scalars(self, pred: Scalar, gold: Scalar) -> bool:
        if pred.lhs and gold.lhs and pred.lhs != gold.lhs and "(" not in pred.lhs + gold.lhs:
            return self._structure()  # "a=2" is not "b=2" (but "y = 2x" may answer "f(x) = 2x")
        if pred.text == gold.text:
            return True
        if not pred.text or not gold.text:
            return False
        if pred.text.lower() == gold.text.lower() and not _is_words(pred.text):
            return self._structure()  # "E" is not "e", "X^2" is not "x^2": symbols are case-sensitive
        if "=" in pred.text and gold.equation and "=" not in gold.text:
            gold = make_scalar(gold.equation)  # "y=2x+1" vs "2y=4x+2": compare whole equations
        elif "=" in gold.text and pred.equation and "=" not in pred.text:
            pred = make_scalar(pred.equation)
        if ("=" in pred.text) != ("=" in gold.text):
            return self._structure()  # an equation against a value: "0" is not "3x+4y+14=0"
        pred_number, gold_number = parse_plain_number(pred.text), parse_plain_number(gold.text)
        if pred_number is not None and gold_number is not None:
            self.used.add("numeric")
            return _numbers_equal(pred_number, gold_number, pred, gold)
        if _is_words(pred.text) or _is_words(gold.text):
            self.used.add("text")
            return _words(pred.text) == _words(gold.text)
        if not self.allow_sympy:
            raise NeedsSympy(f"{pred.text!r} vs {gold.text!r}")
        self.used.add("symbolic")
        equal = _sympy_scalars_equal(pred, gold)
        if equal is None:
            self.used.add("unparsable")
        return bool(equal)


def _is_words(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z][A-Za-z '\-]*", text) and re.search(r"[A-Za-z]{3,}", text))


def _intervals_as_union(group: Group) -> Group:
    """``x < -2 or x > 3`` (a list of intervals) is the union ``(-\\infty,-2) \\cup (3,\\infty)``."""
    intervals = all(isinstance(item, Group) and item.kind == "bracket" and len(item.items) == 2 for item in group.items)
    return Group("union", group.items) if group.kind == "list" and len(group.items) > 1 and intervals else group


def _words(text: str) -> str:
    return _ARTICLE.sub("", " ".join(text.lower().split()))


def _ratio_quotient(ratio: Group) -> Scalar | None:
    """``a:b`` as the number ``a/b`` when both parts are numbers and it is not a clock time."""
    if ratio.open == ":" or len(ratio.items) != 2:
        return None
    numerator, denominator = (parse_plain_number(item.text) for item in ratio.items)
    if numerator is None or denominator is None or denominator.value == 0:
        return None
    value = Fraction(numerator.value) / Fraction(denominator.value)
    return Scalar(f"{value.numerator}/{value.denominator}" if value.denominator != 1 else str(value.numerator))


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


@functools.lru_cache(maxsize=4096)
def _to_sympy(text: str):
    """The parsed expression with sums and products evaluated (``doit``), or ``None``."""
    expr = _parse_sympy(text)
    try:
        return expr.doit() if hasattr(expr, "doit") else expr  # the parser leaves sums unevaluated
    except (Exception, RecursionError):
        return None


@functools.lru_cache(maxsize=4096)  # a gold answer is parsed once per worker, not once per trajectory
def _parse_sympy(text: str):
    """The expression as parsed, unevaluated, or ``None``."""
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy
    from latex2sympy2_extended.math_normalization import NormalizationConfig

    normalization = NormalizationConfig(
        basic_latex=True, units=False, malformed_operators=True, nits=False, boxed="none", equations=False
    )
    conversion = ConversionConfig(lowercase_symbols=False, interpret_simple_eq_as_assignment=False)
    try:
        return latex2sympy(text, normalization_config=normalization, conversion_config=conversion)
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
    raw_pred, raw_gold = _parse_sympy(pred.text), _parse_sympy(gold.text)
    if raw_pred is not None and raw_pred == raw_gold:
        return True  # equal as written (a sum with symbolic bounds need not be evaluated)
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
