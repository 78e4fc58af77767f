"""Final-answer extraction from a reasoning trajectory (the ``extract`` of Eq. 4, DESIGN §1.1).

A trajectory is free text from a slow-thinking model. Its final answer is found by rules, in
this order, on the text *after* the ``<think>…</think>`` block:

1. the last ``\\boxed{…}`` or ``\\fbox{…}`` (braces nested to any depth; ``\\boxed 5`` too);
2. the last answer phrase: "final answer: …", "the answer is …", "correct option is …",
   "answer: …" (the rest of that line, ``$…$`` unwrapped, a trailing period dropped);
3. the last non-empty line, if it is short (at most ``MAX_LAST_LINE_CHARS``), so that a
   truncated essay is not mistaken for an answer.

No answer is ``None`` with a reason (``unclosed_think`` when the model never left its think
block — a trajectory cut at the token limit —, ``no_answer`` otherwise); the verifier turns
that into reward 0. Pure string work with linear-time regexes: no SymPy, safe in the parent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_LAST_LINE_CHARS = 80
BOX_COMMANDS = ("\\boxed", "\\fbox")

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
_ANSWER_PHRASE = re.compile(
    r"\b(?:final\s+answer|answer|correct\s+(?:option|choice))\b\**\s*"
    r"(?:(?:is|would\s+be|should\s+be)\s*:?|:|=)\**[ \t]*(?P<rest>[^\n]*?)(?=\.(?:\s|$)|\n|$)",
    re.IGNORECASE,
)
_LEADING_FILLER = re.compile(r"^(?:so|thus|therefore|hence|finally|answer)\s*[,:]?\s*", re.IGNORECASE)


@dataclass(frozen=True)
class Extraction:
    """The final answer of one response (``None`` when there is none) and how it was found."""

    answer: str | None
    how: str  # boxed | phrase | last_line | no_answer | unclosed_think


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
    best_at, best = -1, None
    for command in BOX_COMMANDS:
        at = text.rfind(command)
        while at >= 0:
            content = _box_content(text, at + len(command))
            if content is not None:
                if at > best_at:
                    best_at, best = at, content
                break
            at = text.rfind(command, 0, at)
    return best


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
        rest = _clean(match.group("rest"))
        if rest:
            found = rest
    return found


def _last_short_line(text: str) -> str | None:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    line = _clean(_LEADING_FILLER.sub("", _clean(lines[-1])))
    if not line or len(line) > MAX_LAST_LINE_CHARS:
        return None
    return line


def extract_answer(response: str | None) -> Extraction:
    """Find the final answer of ``response`` by the rules in the module docstring."""
    if not response:
        return Extraction(None, "no_answer")
    body = strip_think(response)
    if body is None:
        return Extraction(None, "unclosed_think")
    boxed = last_boxed(body)
    if boxed is not None and boxed.strip():
        return Extraction(boxed.strip(), "boxed")
    phrase = _last_phrase(body)
    if phrase is not None:
        return Extraction(phrase, "phrase")
    line = _last_short_line(body)
    if line is not None:
        return Extraction(line, "last_line")
    return Extraction(None, "no_answer")


def unwrap_gold(gold: str) -> str:
    """A gold answer as stored in datasets: ``$…$`` and a ``\\boxed{}`` around it are removed."""
    text = str(gold).strip()
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    return _clean(text) if text.startswith(("$", "\\(", "\\[")) else text
