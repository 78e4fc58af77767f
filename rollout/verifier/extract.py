"""Final-answer extraction from a reasoning trajectory (the ``extract`` of Eq. 4, docs/ALGORITHM.md §1.1).

A trajectory is free text from a slow-thinking model. Its final answer is found by rules, in
this order, on the text *after* the ``<think>…</think>`` block:

1. the last ``\\boxed{…}`` or ``\\fbox{…}`` (braces nested to any depth; ``\\boxed 5`` too);
2. the last answer phrase: "final answer: …", "the answer is …", "correct option is …",
   "answer: …" (the rest of that line, ``$…$`` unwrapped, a trailing period dropped);
3. the last non-empty line, if it is short (at most ``MAX_LAST_LINE_CHARS``), so that a
   truncated essay is not mistaken for an answer.

An answer phrase whose rest is a sentence ("Final Answer: The final answer is $\\frac34$. I hope
it is correct.") yields the math inside it; a last display block (``$$…$$``, ``\\[…\\]``, several
lines long) counts as the last line. ``boxes`` lists the ``\\boxed{}`` of the final paragraph, so a
gold that is a list can be matched by several boxes.

No answer is ``None`` with a reason (``unfinished_think`` when the model opened ``<think>`` and
never closed it — a trajectory cut at the token limit, see ``is_unfinished_think`` —,
``no_answer`` otherwise); the verifier turns that into reward 0. Pure string work with
linear-time regexes: no SymPy, safe in the parent.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

MAX_LAST_LINE_CHARS = 80
MAX_BOXES = 16
MAX_TRAILER_CHARS = 60  # text allowed after a final display block ("." or "is the answer.")
BOX_COMMANDS = ("\\boxed", "\\fbox")

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
_ANSWER_PHRASE = re.compile(
    r"\b(?:final\s+answer|answer|correct\s+(?:option|choice))\b\**\s*"
    r"(?:(?:is|would\s+be|should\s+be)\s*:?|:|=)\**[ \t]*(?P<rest>[^\n]*?)(?=\.(?:\s|$)|\n|$)",
    re.IGNORECASE,
)
_INLINE_MATH = re.compile(r"(?<!\\)\$+((?:\\\$|[^$])+?)(?<!\\)\$+|\\\((.+?)\\\)")  # "\$" is a dollar sign
_DISPLAY_MATH = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]", re.DOTALL)
_SPAN_JOINERS = re.compile(r"(?:\s|,|;|\band\b|\bor\b|\\quad|\\text\{\s*(?:and|or)\s*\})*")
_APPROXIMATELY = re.compile(r"\W*(?:which\s+is\s+|or\s+)?(?:about|approximately|roughly|around|\\approx|\u2248)")
_FINAL_PHRASE = re.compile(r"final\s+answer", re.IGNORECASE)
_LEADING_FILLER = re.compile(r"^(?:so|thus|therefore|hence|finally|answer)\s*[,:]?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Extraction:
    """The final answer of one response (``None`` when there is none) and how it was found."""

    answer: str | None
    how: str  # boxed | phrase | display | last_line | no_answer | unfinished_think
    body: str = ""  # the text after the think block, for a second opinion that extracts by itself
    boxes: tuple[str, ...] = ()  # the boxed answers of the final paragraph, in order


def strip_think(response: str) -> str | None:
    """The text after the last ``</think>``; ``None`` when a ``<think>`` block never closes.

    A ``</think>`` without an opening tag counts as closed (chat templates often put the
    opening tag in the prompt, so the response starts inside the block).
    """
    close = response.rfind(_THINK_CLOSE)
    if close >= 0:
        return response[close + len(_THINK_CLOSE) :]
    if _THINK_OPEN in response:
        return None
    return response


def is_unfinished_think(response: str | None) -> bool:
    """True when ``response`` opened a ``<think>`` block and never closed it (reward 0: unfinished)."""
    return bool(response) and strip_think(response) is None


def _balanced_group(text: str, start: int) -> tuple[str, int] | None:
    """The contents of the brace group opening at ``text[start] == '{'`` and the index after it."""
    depth = 0
    for index in range(start, len(text)):
        char = text[index]
        if char == "\\":
            continue
        if char == "{" and (index == 0 or text[index - 1] != "\\"):
            depth += 1
        elif char == "}" and text[index - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[start + 1 : index], index + 1
    return None


def last_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{…}`` / ``\\fbox{…}`` (nested braces allowed), or ``None``."""
    boxes = _trailing_boxes(text, limit=1)
    return boxes[-1][1] if boxes else None


def _trailing_boxes(text: str, limit: int) -> list[tuple[int, str]]:
    """Up to ``limit`` last boxes as ``(position, content)``, in text order."""
    found: list[tuple[int, str]] = []
    for command in BOX_COMMANDS:
        at, kept = text.rfind(command), 0
        while at >= 0 and kept < limit:
            content = _box_content(text, at + len(command))
            if content is not None:
                found.append((at, content))
                kept += 1
            at = text.rfind(command, 0, at)
    return sorted(found)[-limit:]


def _final_phrase_after_last_box(text: str) -> bool:
    """A "final answer is …" after the last box restates the answer last, so it wins."""
    last = _trailing_boxes(text, limit=1)
    if not last:
        return False
    at, content = last[0]
    tail = text[at + len(content) :]
    return bool(_FINAL_PHRASE.search(tail)) and _last_phrase(tail) is not None


def final_boxes(text: str) -> tuple[str, ...]:
    """The non-empty boxes of the final paragraph (no blank line between them and the last box)."""
    boxes = _trailing_boxes(text, limit=MAX_BOXES)
    kept: list[str] = []
    end = len(text)
    for at, content in reversed(boxes):
        if kept and "\n\n" in text[at:end]:
            break
        if content.strip():
            kept.append(content.strip())
        end = at
    if len(set(kept)) == 1:  # the same answer boxed again ("... \\boxed{4}. Final answer: \\boxed{4}")
        kept = kept[:1]
    return tuple(reversed(kept))


def _box_content(text: str, after: int) -> str | None:
    rest = text[after:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        group = _balanced_group(text, after + len(rest) - len(stripped))
        return group[0] if group else None
    if rest[:1] in (" ", "\t") and stripped:  # "\boxed 5": one token up to the next space or "$"
        return re.match(r"[^\s$]+", stripped).group(0)
    return None


def _clean(candidate: str) -> str:
    text = candidate.strip()
    text = re.sub(r"^\*\*|\*\*$", "", text).strip()  # markdown bold around the answer
    inline = re.fullmatch(r"\$+([^$]+)\$+\.?", text) or re.search(r"^\$+([^$]+)\$+", text)
    if inline:
        text = inline.group(1)
    elif text.startswith("\\(") and "\\)" in text:
        text = text[2 : text.index("\\)")]
    elif text.startswith("\\[") and "\\]" in text:
        text = text[2 : text.index("\\]")]
    return text.strip().rstrip(".").strip()


def _last_phrase(text: str) -> str | None:
    found = None
    for match in _ANSWER_PHRASE.finditer(text):
        rest = _phrase_answer(match.group("rest"))
        if rest:
            found = rest
    return found


def _phrase_answer(rest: str) -> str:
    """The answer in the rest of an answer phrase: a nested phrase is followed, and math wins over prose."""
    for _ in range(4):  # "Final Answer: The final answer is $x$": the inner phrase holds the answer
        inner = _ANSWER_PHRASE.search(rest)
        if inner is None or not inner.group("rest").strip():
            break
        rest = inner.group("rest")
    return _math_in_prose(rest) or _clean(rest)


def _math_in_prose(text: str) -> str | None:
    """The last ``$…$`` / ``\\(…\\)`` of a sentence that also has words ("so the pair is $(7, 6)$")."""
    spans = list(_INLINE_MATH.finditer(text))
    if not spans or not re.search(r"[A-Za-z]{3,}", _INLINE_MATH.sub(" ", text)):
        return None
    after = text[spans[-1].end() :]
    if re.search(r"\d", after) and not _APPROXIMATELY.match(after):
        return None  # "… $x' \geq 2x$, so it increases by 100%": the answer is after the math
    return _clean(next(group for group in spans[-1].groups() if group is not None)) or None


def _last_display(text: str) -> str | None:
    """The content of a display block (``$$…$$``, ``\\[…\\]``) that ends the text, lines and all."""
    last = next(iter(deque(_DISPLAY_MATH.finditer(text), maxlen=1)), None)
    if last is None:
        return None
    trailer = text[last.end() :].strip()
    if len(trailer) > MAX_TRAILER_CHARS or re.search(r"\d|\$|\\\[", trailer):
        return None
    content = next(group for group in last.groups() if group is not None)
    content = " ".join(content.split()).strip().rstrip(".,").strip()
    return content or None


def _last_short_line(text: str) -> str | None:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    line = _math_in_prose(lines[-1]) or _clean(_LEADING_FILLER.sub("", _clean(lines[-1])))
    if not line or len(line) > MAX_LAST_LINE_CHARS:
        return None
    return line


def extract_answer(response: str | None) -> Extraction:
    """Find the final answer of ``response`` by the rules in the module docstring."""
    if not response:
        return Extraction(None, "no_answer")
    body = strip_think(response)
    if body is None:
        return Extraction(None, "unfinished_think")
    boxes = final_boxes(body)
    if boxes and not _final_phrase_after_last_box(body):
        return Extraction(boxes[-1], "boxed", body, boxes)
    for how, find in (("phrase", _last_phrase), ("display", _last_display), ("last_line", _last_short_line)):
        answer = find(body)
        if answer is not None:
            return Extraction(answer, how, body)
    return Extraction(None, "no_answer", body)


def unwrap_gold(gold: str) -> str:
    """A gold answer as stored in datasets, ``$…$`` and ``\\boxed{}`` removed.

    Several boxes in the final paragraph (``\\boxed{1}, \\boxed{2}``) or several math spans joined
    only by "and" / "or" / commas (``$1$ and $2$``) are one list answer.
    """
    text = str(gold).strip()
    boxes = final_boxes(text)
    if boxes:
        return ", ".join(boxes)
    spans = list(_INLINE_MATH.finditer(text))
    if len(spans) > 1 and _SPAN_JOINERS.fullmatch(_INLINE_MATH.sub("", text)):
        return ", ".join(_clean(next(g for g in span.groups() if g is not None)) for span in spans)
    if len(text) > MAX_LAST_LINE_CHARS:  # a worked solution as the gold: its stated final answer
        phrase = _last_phrase(text)
        if phrase:
            return phrase
    return _clean(text) if text.startswith(("$", "\\(", "\\[")) else text
