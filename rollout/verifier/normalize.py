"""Answer normalisation: LaTeX clean-up and the structure of an answer (scalars, tuples, sets, intervals).

An extracted answer such as ``x = \\left( 1, \\dfrac{1}{2} \\right)`` or ``5\\text{ cm}`` is turned
into a small tree the equivalence checker walks:

* ``Scalar(text, percent, degree)`` — one expression in a canonical spelling (``\\dfrac`` →
  ``\\frac``, ``\\frac12`` → ``\\frac{1}{2}``, ``\\left``/``\\right``, ``\\!``, ``\\,`` and units
  removed, unicode minus → ``-``), with flags for a stripped ``\\%`` and ``^\\circ``;
* ``Group(kind, open, close, items)`` — ``kind`` is ``bracket`` (``(a,b)``, ``[a,b)``, ``\\langle a,b\\rangle``:
  ordered; two items are an interval, so the bracket characters matter), ``set`` (``\\{a,b\\}``:
  unordered), ``list`` (a bare ``a, b`` or a ``\\pm`` expansion: unordered solutions) or ``union``
  (``A \\cup B``: unordered).

Rules decided here (documented so that tests can pin them):

* thousands separators: the whole answer ``-?d{1,3}(,ddd)+`` (groups of exactly three digits) is
  one number (``1,000`` → ``1000``); anything else with a comma is a list (``1,2`` stays two items);
* plain-text equations: a leading simple left-hand side (``x =``, ``f(x) =``, ``x \\in``, ``(x, y) =``,
  ``S_1:S_2 =``) is dropped and remembered (``lhs``: ``a=2, b=1`` is not ``a=1, b=2``); ``2+3=5``
  keeps its last part when that is a number and the left side has no variable; other equations
  (``3x+4y+14=0``, ``x^2+y^2=1``) stay whole, so a part of them is never the answer;
* ``var < c``, ``c > var`` and ``a < var \\leq b`` become intervals; ``a \\pm b`` becomes the list
  ``{a-b, a+b}``; ``a:b`` is an ordered ``ratio`` (``12:00`` is not ``1:00``, ``5:0`` is not ``7:0``);
* spelling: ``\\gt``/``\\lt``, doubled backslashes (``\\\\frac``), ``11,\\!111``, ``pct`` and
  ``percentage`` are read as ``>``/``<``, ``\\frac``, ``11111`` and ``%``;
* units: a ``\\text{…}``/``\\mathrm{…}`` after a value is a unit and is dropped (``5\\text{ cm}`` → ``5``),
  as are common multi-letter plain-text units (``cm``, ``kg``, ``meters``…); single-letter plain
  units are kept (``5m`` may be algebra).

Plain numbers (integers, decimals, ``1.2e3``, ``1.2\\times10^{3}``, ``\\frac{a}{b}``, ``a/b``, ``\\infty``,
the words ``zero`` … ``twenty``)
parse here without SymPy so the parent can decide most cases in microseconds.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from fractions import Fraction

MAX_ITEMS = 64
MAX_EXPONENT = 1000

_UNICODE = {
    "\u2212": "-", "\u2013": "-", "\u2014": "-", "\u00d7": "\\times ", "\u22c5": "\\cdot ", "\u00b7": "\\cdot ",
    "\u00f7": "/", "\u03c0": "\\pi ", "\u221e": "\\infty ", "\u221a": "\\sqrt", "\u00b0": "^\\circ",
    "\u2264": "\\leq ", "\u2265": "\\geq ", "\u2260": "\\neq ", "\u00b1": "\\pm ", "\u2213": "\\mp ",
    "\u222a": "\\cup ", "\u00a0": " ", "\u2009": " ", "\u202f": " ", "\uff0c": ",", "\u2018": "'", "\u2019": "'",
}  # fmt: skip
_UNICODE_TABLE = str.maketrans(_UNICODE)
_TEXT_COMMANDS = re.compile(
    r"\\(?:text|textrm|textnormal|textbf|textit|mathrm|mathbf|mathit|mbox|rm|operatorname)\s*\{"
)
_DELIMITER_SIZES = re.compile(
    r"\\(?:left|right|bigl|bigr|Bigl|Bigr|biggl|biggr|big|Big|bigg|Bigg)(?![A-Za-z])\.?"
)
_DEGREE = re.compile(
    r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|\s*(?<![A-Za-z])degrees?(?![A-Za-z])"
)
_PERCENT = re.compile(r"\\%|%|\s*(?<![A-Za-z])(?:percentage|percent|pct)(?![A-Za-z])")
_PLAIN_UNITS = re.compile(
    r"(?<=[\d}.)])\s*(?:cm|mm|km|kg|mg|ml|mL|sq\s*units?|square\s+units|cubic\s+units|units?|meters?|metres?|"
    r"feet|foot|ft|inches|inch|miles?|hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|years?|dollars?|"
    r"cents?|grams?|liters?|litres?|mph|km/h|m/s|kmph|sq\s*m|sq\s*cm)(?:\^\{?\d\}?|\u00b2|\u00b3)?$"
)
_THOUSANDS = re.compile(r"(-?[1-9]\d{0,2}(?:,\d{3})+(?:\.\d+)?)(?![\d,./])")
_CONNECTORS = re.compile(
    r"\\text\{\s*(?:or|and|,)\s*\}|\s+(?:or|and)\s+|(?<=[)\]}])\s*(?:or|and)\s*(?=[(\[{\\])"
)
_SIMPLE_LHS = re.compile(
    r"(?:[A-Za-z](?:_\{?\w+\}?)?'*|\\[A-Za-z]+(?:_\{?\w+\}?)?|[A-Za-z]+\([A-Za-z](?:,[A-Za-z])*\)|"
    r"\((?:[A-Za-z](?:_\{?\w+\}?)?,)+[A-Za-z](?:_\{?\w+\}?)?\)|\\angle ?[A-Za-z]+|[A-Z]{2,3}|"
    r"[A-Za-z](?:_\{?\w+\}?)?:[A-Za-z](?:_\{?\w+\}?)?)"
)
_DOUBLED_BACKSLASH = re.compile(
    r"\\\\(?=(?:[dtc]?frac|sqrt|left|right|text|math[a-z]+|boxed|l[et]q?|g[et]q?|neq?|cdot|times|pi|"
    r"infty|in|cup|cap|pm|mp|circ|degree|sin|cos|tan|cot|sec|csc|log|ln|exp|alpha|beta|gamma|theta|"
    r"lambda|mu|sigma|omega|angle|triangle|dots|ldots|cdots|quad|qquad|approx|begin|end)(?![A-Za-z]))"
)
_NUMBER_WORDS = {word: value for value, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_FLIPPED_OPS = {"<": ">", ">": "<", "\\leq": "\\geq", "\\geq": "\\leq", "\\le": "\\ge", "\\ge": "\\le"}
_CLOCK = re.compile(r"\d{1,2}:\d{2}")
_VAR = r"(?:[A-Za-z](?:_\{?\w+\}?)?|\\[A-Za-z]+)"
_LESS = r"(?:<|\\leq|\\le(?![a-z]))"
_MORE = r">|\\geq|\\ge(?![a-z])"
_ONE_SIDED = re.compile(rf"(?P<var>{_VAR}) ?(?P<op>{_LESS}|{_MORE}) ?(?P<value>[^<>=]+)")
_ONE_SIDED_FLIPPED = re.compile(rf"(?P<value>[^<>=]+?) ?(?P<op>{_LESS}|{_MORE}) ?(?P<var>{_VAR})")
_TWO_SIDED = re.compile(
    rf"(?P<low>[^<>=]+?)(?P<op1>{_LESS}) ?(?P<var>{_VAR}) ?(?P<op2>{_LESS}) ?(?P<high>[^<>=]+)"
)
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_TIMES_TEN = re.compile(
    r"(?P<mant>[-+]?(?:\d+\.?\d*|\.\d+))(?:\\times|\\cdot|\*|x)10\^\{?(?P<exp>[-+]?\d+)\}?"
)
_FRACTION = re.compile(
    r"(?P<sign>-?)\\frac\{(?P<num>-?\d+)\}\{(?P<den>-?\d+)\}|(?P<sign2>-?)(?P<n>\d+)/(?P<d>\d+)"
)


@dataclass(frozen=True)
class Scalar:
    """One expression in canonical spelling; ``percent`` / ``degree`` say a ``%`` / ``^\\circ`` was stripped."""

    text: str
    percent: bool = False
    degree: bool = False
    equation: str | None = None  # the whole "lhs = text" when a simple left-hand side was dropped
    lhs: str | None = None  # that left-hand side ("a" of "a=2"): two named values must name the same thing


@dataclass(frozen=True)
class Group:
    """Several answers: ``kind`` is bracket (ordered), set, list or union (unordered)."""

    kind: str
    items: tuple
    open: str = ""
    close: str = ""


@dataclass(frozen=True)
class Number:
    """A plain number; ``inexact`` when written with a decimal point or an exponent (tolerance applies)."""

    value: Fraction | float
    inexact: bool


def _brace_group_end(text: str, open_at: int) -> int:
    """Index just after the ``}`` that closes the ``{`` at ``open_at`` (``len(text)`` if unclosed)."""
    depth = 0
    for index in range(open_at, len(text)):
        char = text[index]
        if char == "{" and text[index - 1 : index] != "\\":
            depth += 1
        elif char == "}" and text[index - 1 : index] != "\\":
            depth -= 1
            if depth == 0:
                return index + 1
    return len(text)


def _strip_text_commands(text: str) -> str:
    """Unwrap ``\\text{…}``-like commands; one that follows a value is a unit and is dropped."""
    for _ in range(32):
        match = _TEXT_COMMANDS.search(text)
        if match is None:
            return text
        end = _brace_group_end(text, match.end() - 1)
        content = text[match.end() : end - 1].strip()
        before, after = text[: match.start()].rstrip(), text[end:]
        is_unit = (
            bool(before)
            and before[-1] not in "=+-*/(,[{<>"
            and "operatorname" not in match.group(0)
            and re.fullmatch(
                r"[A-Za-z\u00b5\u03bc\u2126 /.^{}\d\\-]*[A-Za-z\u00b5\u03bc\u2126][\w^{}/.]*", content
            )
        )
        if is_unit:
            after = re.sub(r"^\s*\^\s*(?:\{[^{}]*\}|\d)", "", after)
            text = before + after
        else:
            text = before + content + after
    return text


def _remove_unneeded_braces(text: str) -> str:
    while text.startswith("{") and _brace_group_end(text, 0) == len(text):
        text = text[1:-1].strip()
    return text


def _fix_shorthand(text: str) -> str:
    """``\\frac12`` → ``\\frac{1}{2}``, ``\\sqrt2`` → ``\\sqrt{2}``, ``\\frac{a}b`` → ``\\frac{a}{b}``."""
    text = re.sub(r"\\sqrt(?![A-Za-z{\[])\s*(\w)", r"\\sqrt{\1}", text)
    text = re.sub(r"\\frac\s*(\w)\s*(\w)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac\s*(\w)\s*(?=\{)", r"\\frac{\1}", text)
    text = re.sub(r"\\frac(\{[^{}]*\})\s*(\w)", r"\\frac\1{\2}", text)
    return text


def _collapse_spaces(text: str) -> str:
    """Drop whitespace except between two letters (``\\pi r``, ``north east`` keep one space)."""
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r"(?<![A-Za-z]) | (?![A-Za-z])", "", text)


@functools.lru_cache(maxsize=8192)  # gold answers repeat across the K x N trajectories of a question
def clean_latex(text: str) -> str:
    """Whole-answer clean-up that keeps the structure (brackets, commas) intact."""
    text = _DOUBLED_BACKSLASH.sub(r"\\", str(text).translate(_UNICODE_TABLE)).strip()
    text = re.sub(r"\\gt(?![A-Za-z])", ">", re.sub(r"\\lt(?![A-Za-z])", "<", text))
    text = re.sub(r"(?<=\d),\\!\s*(?=\d{3})", ",", text)  # "11,\!111": a thousands separator
    text = re.sub(r"^\$+|\$+$", "", text).strip()
    text = re.sub(r"^\\[(\[]|\\[)\]]$", "", text).strip()
    text = _DELIMITER_SIZES.sub("", text)
    text = re.sub(r"\\[!,]|\{,\}(?=\d)", lambda m: "" if m.group(0) != "{,}" else ",", text)
    text = re.sub(r"\\[;: ]|\\q?quad|~", " ", text)
    text = re.sub(r"\\(?:displaystyle|textstyle|scriptstyle)|\\\$", "", text)
    text = text.replace("<=", "\\leq ").replace(">=", "\\geq ").replace("!=", "\\neq ")
    text = re.sub(r"\\[dtc]frac", r"\\frac", text)
    text = text.replace("\\lbrace", "\\{").replace("\\rbrace", "\\}").replace("\\emptyset", "\\{\\}")
    text = text.replace("\\varnothing", "\\{\\}").replace("\\mathbb{R}", "(-\\infty,\\infty)")
    text = re.sub(r"\\(le|ge|ne)(?![A-Za-z])", r"\\\1q", text)
    text = re.sub(r"\\(?:dots|ldots|cdots)", r"\\dots", text)
    text = _CONNECTORS.sub(",", text).strip()
    thousands = _THOUSANDS.match(text)
    if thousands and "," not in text[thousands.end() :]:
        text = thousands.group(1).replace(",", "") + text[thousands.end() :]
    text = _collapse_spaces(text)
    text = re.sub(r"^\+|(?<=[(,\[])\+", "", text)  # a leading "+" sign
    text = text.rstrip(".").strip()
    return _remove_unneeded_braces(text)


def make_scalar(text: str) -> Scalar:
    """Per-item clean-up: units, ``%``, degrees, shorthand LaTeX, outer braces."""
    text = _strip_text_commands(text)
    degree = bool(_DEGREE.search(text))
    text = _DEGREE.sub("", text)
    percent = bool(_PERCENT.search(text))
    text = _PERCENT.sub("", text)
    text = _PLAIN_UNITS.sub("", text.strip())
    text = _fix_shorthand(_collapse_spaces(text))
    text = _remove_unneeded_braces(text.rstrip(".").strip())
    return Scalar(text, percent=percent, degree=degree)


def split_top_level(text: str, separators: tuple[str, ...]) -> list[str]:
    """Split at separators outside (), [], {} and \\{ \\} (intervals' mixed brackets count as pairs)."""
    parts, depth, start, index = [], 0, 0, 0
    while index < len(text):
        char = text[index]
        if char == "\\" and text[index + 1 : index + 2] in ("{", "}"):
            depth += 1 if text[index + 1] == "{" else -1
            index += 2
            continue
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            hit = next((sep for sep in separators if _separator_at(text, index, sep)), None)
            if hit is not None:
                parts.append(text[start:index])
                index += len(hit)
                start = index
                continue
        index += 1
    parts.append(text[start:])
    return parts


def _separator_at(text: str, index: int, separator: str) -> bool:
    """``separator`` starts at ``index``; a command (``\\in``) must not continue (``\\infty``)."""
    if not text.startswith(separator, index):
        return False
    follower = text[index + len(separator) : index + len(separator) + 1]
    return not (separator[-1].isalpha() and follower.isalpha())


def _enclosing(text: str) -> tuple[str, str, str] | None:
    """``(open, inner, close)`` when one bracket pair encloses the whole text."""
    for opener, closer in (("\\{", "\\}"), ("\\langle", "\\rangle")):
        if text.startswith(opener) and text.endswith(closer):
            inner = text[len(opener) : -len(closer)]
            if _balanced(inner):
                return opener, inner, closer
    if len(text) >= 2 and text[0] in "([" and text[-1] in ")]":
        inner = text[1:-1]
        if _balanced(inner):
            return text[0], inner, text[-1]
    return None


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += 1 if char in "([{" else -1 if char in ")]}" else 0
        if depth < 0:
            return False
    return depth == 0


@functools.lru_cache(maxsize=8192)
def parse_answer(text: str, depth: int = 0) -> Scalar | Group:
    """The answer tree of an extracted (or gold) answer; see the module docstring."""
    text = clean_latex(text) if depth == 0 else text
    if depth > 8:
        return make_scalar(text)
    union = split_top_level(text, ("\\cup",))
    if len(union) > 1:
        return Group("union", tuple(parse_answer(part, depth + 1) for part in union))
    enclosed = _enclosing(text)
    if enclosed is not None:
        opener, inner, closer = enclosed
        items = [item for item in split_top_level(inner, (",", ";")) if item]
        if opener == "\\{":
            return Group("set", tuple(parse_answer(item, depth + 1) for item in items))
        if len(items) == 1 and opener in "([":
            return parse_answer(inner, depth + 1)
        if len(items) > 1:
            kind_items = tuple(parse_answer(item, depth + 1) for item in items)
            if opener == "\\langle":  # a vector, never an interval
                opener, closer = "(", ")"
            return Group("bracket", kind_items, opener, closer)
    items = split_top_level(text, (",", ";"))
    if len(items) > 1:
        return Group("list", tuple(parse_answer(item, depth + 1) for item in items if item))
    return _parse_ratio(text, depth) or _parse_item(text, depth)


def _parse_ratio(text: str, depth: int) -> Group | None:
    """``a:b`` (not ``x:y = …``, whose left side is dropped first) as an ordered ratio; clock times too."""
    parts = split_top_level(text, (":",))
    if len(parts) < 2 or not all(part.strip() for part in parts) or "=" in text:
        return None
    return Group("ratio", tuple(make_scalar(part) for part in parts), open=":" if _CLOCK.fullmatch(text) else "")


def _parse_item(text: str, depth: int) -> Scalar | Group:
    rhs = _drop_left_hand_side(text)
    if rhs != text:
        node = parse_answer(rhs, depth + 1)
        if isinstance(node, Scalar) and "=" in text:
            lhs = split_top_level(text, ("=",))[0]
            named = _named_quantity(lhs)
            return replace(node, equation=text, lhs=_collapse_spaces(lhs) if named else None)
        return node
    if "\\pm" in text or "\\mp" in text:
        plus = text.replace("\\pm", "+").replace("\\mp", "-")
        minus = text.replace("\\pm", "-").replace("\\mp", "+")
        return Group("list", (make_scalar(plus), make_scalar(minus)))
    interval = _inequality_interval(text)
    if interval is not None:
        return interval
    return make_scalar(text)


def _drop_left_hand_side(text: str) -> str:
    approx = split_top_level(text, ("\\approx",))
    if len(approx) > 1 and all(approx) and not _SIMPLE_LHS.fullmatch(_strip_text_commands(approx[0])):
        return approx[0]  # "\\frac{1}{3} \\approx 0.333": the exact value before the approximation
    parts = split_top_level(text, ("=", "\\approx", "\\in"))
    if len(parts) < 2 or any(not part for part in parts):
        return text
    last = parts[-1]
    if _named_quantity(parts[0]):
        return last
    if parse_plain_number(make_scalar(last).text) is not None and not _has_variable(parts[0]):
        return last  # "2+3=5": a computation ending in its value; "3x+4y+14=0" stays whole
    return text


def _named_quantity(lhs: str) -> bool:
    """A left-hand side that names what the answer is: ``x``, ``f(x)``, ``(x, y)``, ``|AB|``,
    ``\\frac{NO}{BO}``, ``S_{ABC}`` — symbols only, no sum or number (``x+y``, ``x^2+y^2`` and ``2x``
    make an equation, which stays whole)."""
    text = _strip_text_commands(lhs).strip()
    if _SIMPLE_LHS.fullmatch(text):
        return True
    bare = re.sub(r"_\{[^{}]*\}|_\w|\\[A-Za-z]+", "", text)
    return bool(re.search(r"[A-Za-z]", bare)) and not re.search(r"[\d+\-=<>,;]", bare)


def _has_variable(text: str) -> bool:
    """A letter outside LaTeX command names (``\\frac``, ``\\sqrt``, ``\\times`` are not variables)."""
    return bool(re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", _strip_text_commands(text))))


def _inequality_interval(text: str) -> Group | None:
    two = _TWO_SIDED.fullmatch(text)
    if two:
        low_open = "(" if two.group("op1") == "<" else "["
        high_close = ")" if two.group("op2") == "<" else "]"
        items = (make_scalar(two.group("low")), make_scalar(two.group("high")))
        return Group("bracket", items, low_open, high_close)
    one = _ONE_SIDED.fullmatch(text)
    flipped = None if one else _ONE_SIDED_FLIPPED.fullmatch(text)
    if one is None and flipped is None:
        return None
    if flipped is not None:  # "5 \\geq x" is "x \\leq 5"
        one, op = flipped, _FLIPPED_OPS[flipped.group("op")]
    else:
        op = one.group("op")
    value = make_scalar(one.group("value"))
    strict = op in ("<", ">")
    if op == "<" or op.startswith("\\le"):
        return Group("bracket", (Scalar("-\\infty"), value), "(", ")" if strict else "]")
    return Group("bracket", (value, Scalar("\\infty")), "(" if strict else "[", ")")


def parse_plain_number(text: str) -> Number | None:
    """A number written without symbols (see module docstring), or ``None``."""
    if len(text) > 200:
        return None
    if text in ("\\infty", "-\\infty", "+\\infty", "inf", "-inf", "infinity", "-infinity"):
        return Number(float("-inf") if text.startswith("-") else float("inf"), inexact=False)
    if text.lower() in _NUMBER_WORDS:
        return Number(Fraction(_NUMBER_WORDS[text.lower()]), inexact=False)
    if _PLAIN_NUMBER.fullmatch(text):
        inexact = "." in text or "e" in text.lower()
        return Number(Fraction(text), inexact=inexact)
    times_ten = _TIMES_TEN.fullmatch(text) or re.fullmatch(r"(?P<mant>)10\^\{?(?P<exp>[-+]?\d+)\}?", text)
    if times_ten:
        exponent = int(times_ten.group("exp"))
        if abs(exponent) > MAX_EXPONENT:
            return None
        mantissa = times_ten.group("mant") or "1"
        return Number(Fraction(mantissa) * Fraction(10) ** exponent, inexact="." in mantissa)
    fraction = _FRACTION.fullmatch(text)
    if fraction:
        numerator = int(fraction.group("num") or fraction.group("n"))
        denominator = int(fraction.group("den") or fraction.group("d"))
        if denominator == 0:
            return None
        negative = (fraction.group("sign") or fraction.group("sign2")) == "-"
        value = Fraction(numerator, denominator)
        return Number(-value if negative else value, inexact=False)
    return None
