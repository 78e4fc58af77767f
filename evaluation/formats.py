"""The benchmark formats: one declarative row per published format, read by one function.

Each ``Format`` names the fields of a benchmark's Hugging Face release (or its official JSON):
which field is the id, the question, the gold answer, the image(s), the options, the category
reported per benchmark, and where the benchmark ships its own prompt or response hint. Only the
few things that are not a field name (a hint that depends on the answer type, the MMMU subject
that lives in the id, OlympiadBench's list of final answers) are small functions beside the table.

``read_benchmark(name, format, path, response_hint)`` turns a file (or a directory of files) into
``Question``s: the user text the model sees (hint first, then question and options), the encoded
images, the accepted gold answers, the options (so a letter and its option text count the same),
the category, and whether the paper judges the benchmark with an LLM. A bad file, row or field is
one ``FormatError`` naming all three; ids must be unique within a benchmark.

The ``jsonl`` format is the project's generic one (also parquet): ``id``, ``image`` (path,
encoded bytes, or a list of them) or none, ``question``, ``answer``, optional ``choices`` (list),
``category`` (else ``difficulty``, so a rollout input file reads as it is) and ``hint``. The demo
writes its held-out questions in it.
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evaluation.readers import FormatError, files_root, images_of, iter_rows
from evaluation.readers import field as read_field
from sophia_common.images import image_dimensions

Row = dict[str, Any]


@dataclass(frozen=True)
class Question:
    """One question as the model sees it and as it is scored."""

    benchmark: str
    id: str
    text: str
    """The user turn: response hint (if any, and enabled), then the question and its options."""
    question: str
    """The question without the hint (for the LLM extractor and judge)."""
    answers: tuple[str, ...]
    """Accepted gold answers (the first is the reference)."""
    choices: tuple[str, ...] | None
    category: str
    images: tuple[bytes | Path, ...]
    judged: bool
    """The paper judges this benchmark with an LLM (MMMU, MathVerse, MV-MATH)."""
    location: str

    def image_digest(self) -> str:
        digest = hashlib.sha256()
        for image in self.images:
            digest.update(image if isinstance(image, bytes) else Path(image).read_bytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class Format:
    """The fields of one published benchmark format (dotted names reach into structs)."""

    name: str
    title: str
    download: str
    id: str
    question: str | None
    answer: str
    images: tuple[str, ...] = ()
    """Fields whose every non-null value is an image (or a list of images)."""
    image_path: str | None = None
    """A path field used only when ``images`` hold nothing (MathVista's ``image`` beside ``decoded_image``)."""
    image_dirs: tuple[str, ...] = ()
    """Sub-directories where relative image paths are also looked up (MV-MATH's ``images/``)."""
    choices: str | None = None
    show_choices: bool = True
    """Append the options to the question (they are in the image for MMMU-Pro vision)."""
    category: str | Callable[[Row], str] | None = None
    context: str | None = None
    prompt_field: str | None = None
    """A field holding the benchmark's own hint + question + options (used when hints are on)."""
    hint: str | Callable[[Row], str] | None = None
    gold: Callable[[Any], tuple[str, ...]] | None = None
    keep: Callable[[Row], bool] | None = None
    needs_image: bool = True
    judged: bool = False


# ---------------------------------------------------------------- small per-format rules

MATHVISION_HINT = ("Please solve the problem and put your final answer in \\boxed{}. If it is a multiple-choice "
                   "question, put only the letter of the correct option in \\boxed{}.")
MMMU_PRO_STANDARD_HINT = ("Answer the following multiple-choice question. The last line of your response should "
                          "be of the form 'Answer: $LETTER' (without quotes) where LETTER is one of the options. "
                          "Think step by step before answering.")
MMMU_PRO_VISION_HINT = ("Write out the multiple-choice question in the image and then solve it. The last line of "
                        "your response should be of the form 'Answer: $LETTER' (without quotes) where LETTER is "
                        "one of the options. Think step by step before answering.")
_OLYMPIAD_TYPES = {"Numerical": "a numerical value", "Expression": "an expression", "Equation": "an equation",
                   "Interval": "an interval", "Tuple": "a tuple"}


def _dynamath_hint(row: Row) -> str:
    kind = str(read_field(row, "answer_type", "")).lower()
    if "choice" in kind:
        return "Answer with the letter of the correct option."
    if kind == "float":
        return "Answer with a number rounded to three decimal places."
    return ""


def _mmmu_hint(row: Row) -> str:
    if str(read_field(row, "question_type", "multiple-choice")) == "open":
        return "Answer the question using a single word or phrase."
    return "Answer with the letter of the correct option from the given choices."


def _mv_math_hint(row: Row) -> str:
    kind = str(read_field(row, "answer_type", "")).lower()
    if "choice" in kind:
        return "This is a multiple-choice question with one correct option; give its letter as the final answer."
    if "step" in kind:
        return "Answer every sub-question in order and give each final answer."
    return ""


def _olympiad_hint(row: Row) -> str:
    subject = str(read_field(row, "subject", "") or "Math")
    kinds = [_OLYMPIAD_TYPES.get(kind.strip(), "a value")
             for kind in str(read_field(row, "answer_type", "") or "").split(",") if kind.strip()] or ["a value"]
    if read_field(row, "is_multiple_answer", False):
        answer = f"The problem has multiple answers, each of them should be {kinds[0]}."
    else:
        answer = f"The answer of the problem should be {kinds[0]}."
    unit = ", without the unit in \\boxed{}" if read_field(row, "unit", None) else ""
    return (f"The following is an open-ended problem from an International {subject} competition. {answer} "
            "Please calculate the answer according to the given requirements and the information provided. "
            "Use LaTeX for the variables and formulas in the solution and the result, and end your solution "
            f"with \"So the final answer is \\boxed{{answer}}.\"{unit}")


def _mmmu_subject(row: Row) -> str:
    parts = str(row.get("id", "")).split("_")
    return "_".join(parts[1:-1]) if len(parts) > 2 else "all"


def _mmmu_gold(value: Any) -> tuple[str, ...]:
    """MMMU open answers are sometimes a Python list literal of accepted answers."""
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            items = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            items = None
        if isinstance(items, list) and items:
            return tuple(str(item) for item in items)
    return (text,)


def _olympiad_gold(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, (list, tuple)) else [value]
    items = [str(item).strip().strip("$").strip() for item in items if str(item).strip()]
    return (", ".join(items),) if items else ()


def _olympiad_keep(row: Row) -> bool:
    return str(read_field(row, "question_type", "")) != "Theorem proof"


def _olympiad_category(row: Row) -> str:
    return f"{read_field(row, 'modality', '') or 'all'}/{read_field(row, 'subject', '') or 'all'}"


def _generic_category(row: Row) -> str:
    """``category``, else a rollout input's ``difficulty`` (so rollout input files evaluate as they are)."""
    return str(row.get("category") or row.get("difficulty") or "all")


_IMAGE_1_TO = ("image_1", "image_2", "image_3", "image_4", "image_5", "image_6", "image_7")

# ---------------------------------------------------------------- the table

FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("mathvista", "MathVista (testmini)", "huggingface.co/datasets/AI4Math/MathVista, split testmini",
           id="pid", question="question", answer="answer", images=("decoded_image",), image_path="image",
           choices="choices", category="metadata.task", prompt_field="query"),
    Format("mathvision", "MathVision (test, testmini)", "huggingface.co/datasets/MathLLMs/MathVision",
           id="id", question="question", answer="answer", images=("decoded_image",), image_path="image",
           choices="options", category="subject", hint=MATHVISION_HINT),
    Format("mathverse", "MathVerse (testmini)", "huggingface.co/datasets/AI4Math/MathVerse, config testmini",
           id="sample_index", question="question", answer="answer", images=("image",),
           category="problem_version", prompt_field="query_cot", judged=True),
    Format("dynamath", "DynaMath (10 variants of 501 questions)",
           "huggingface.co/datasets/DynaMath/DynaMath_Sample, splits sample_variant1-10",
           id="id", question="question", answer="ground_truth", images=("decoded_image",), image_path="image",
           category="subject", hint=_dynamath_hint),
    Format("mmmu", "MMMU (validation)", "huggingface.co/datasets/MMMU/MMMU, split validation (30 subjects)",
           id="id", question="question", answer="answer", images=_IMAGE_1_TO, choices="options",
           category=_mmmu_subject, hint=_mmmu_hint, gold=_mmmu_gold, judged=True),
    Format("mmmu_pro_standard", "MMMU-Pro (standard, 10 options)",
           "huggingface.co/datasets/MMMU/MMMU_Pro, config 'standard (10 options)'",
           id="id", question="question", answer="answer", images=_IMAGE_1_TO, choices="options",
           category="subject", hint=MMMU_PRO_STANDARD_HINT),
    Format("mmmu_pro_vision", "MMMU-Pro (vision)", "huggingface.co/datasets/MMMU/MMMU_Pro, config vision",
           id="id", question=None, answer="answer", images=("image",), choices="options", show_choices=False,
           category="subject", hint=MMMU_PRO_VISION_HINT),
    Format("mv_math", "MV-MATH", "huggingface.co/datasets/PeijieWang/MV-MATH (MV-MATH.json + images/)",
           id="problem_id", question="question", answer="answer", images=("input_image",),
           image_dirs=("images",), category="subject", hint=_mv_math_hint, judged=True),
    Format("olympiadbench", "OlympiadBench (open-ended, multimodal and text)",
           "huggingface.co/datasets/Hothan/OlympiadBench (OE_* configs)",
           id="id", question="question", answer="final_answer", images=_IMAGE_1_TO[:5], category=_olympiad_category,
           context="context", hint=_olympiad_hint, gold=_olympiad_gold, keep=_olympiad_keep, needs_image=False),
    Format("jsonl", "generic rows (the project's format)", "written by you or by the demo",
           id="id", question="question", answer="answer", images=("image", "images", "image_b64"),
           choices="choices", category=_generic_category, hint=lambda row: str(read_field(row, "hint", "") or ""),
           needs_image=False),
)}


# ---------------------------------------------------------------- reading


def read_benchmark(name: str, format_name: str, path: str | Path, response_hint: bool = True) -> list[Question]:
    """Every usable question of ``path`` in ``format_name``; a bad row raises ``FormatError``.

    Ids must be unique within a file. An id found in several files of a directory (DynaMath's ten
    variant files, OlympiadBench's configs) is qualified by the file: ``<file path in the dir>/<id>``.
    """
    if format_name not in FORMATS:
        raise FormatError(f"benchmark {name}: unknown format {format_name!r}; known: {', '.join(FORMATS)}")
    fmt, path = FORMATS[format_name], Path(path)
    questions: list[tuple[Path, Question]] = []
    seen: dict[tuple[Path, str], str] = {}
    for file, index, row in iter_rows(path):
        if fmt.keep is not None and not fmt.keep(row):
            continue
        question = _question(fmt, name, file, f"{file}:row {index}", row, response_hint)
        if (file, question.id) in seen:
            raise FormatError(f"{question.location}: field {fmt.id!r}: id {question.id!r} repeats "
                              f"{seen[file, question.id]}")
        seen[file, question.id] = question.location
        questions.append((file, question))
    if not questions:
        raise FormatError(f"{path}: no {fmt.title} question in it")
    files_of: dict[str, set[Path]] = {}
    for file, question in questions:
        files_of.setdefault(question.id, set()).add(file)
    root = files_root(path)
    return [replace(question, id=f"{file.relative_to(root).with_suffix('')}/{question.id}")
            if len(files_of[question.id]) > 1 else question for file, question in questions]


def _required(row: Row, name: str, location: str, allow_empty: bool = False) -> Any:
    try:
        value = read_field(row, name)
    except KeyError:
        raise FormatError(f"{location}: field {name!r} is missing") from None
    if allow_empty:
        return value if value is not None else ""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise FormatError(f"{location}: field {name!r} is empty")
    return value


def _question(fmt: Format, benchmark: str, file: Path, location: str, row: Row, hint_on: bool) -> Question:
    item_id = str(_required(row, fmt.id, location))
    raw_answer = _required(row, fmt.answer, location)
    answers = fmt.gold(raw_answer) if fmt.gold else (str(raw_answer).strip(),)
    if not answers:
        raise FormatError(f"{location}: field {fmt.answer!r} holds no answer")
    # a question may be empty when the image holds it (MathVerse "Vision Only")
    question = str(_required(row, fmt.question, location, allow_empty=True)) if fmt.question else ""
    context = read_field(row, fmt.context, None) if fmt.context else None
    if context:
        question = f"{str(context).strip()}\n{question}"
    choices = _choices(row, fmt, location)
    shown = question
    if choices and fmt.show_choices:
        shown = f"{question}\nChoices:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    text = shown.strip()
    if hint_on:
        own = read_field(row, fmt.prompt_field, None) if fmt.prompt_field else None
        hint = fmt.hint(row) if callable(fmt.hint) else fmt.hint
        text = str(own).strip() if own else "\n".join(part for part in (hint, shown.strip()) if part)
    images = _images(row, fmt, file, location)
    if not text and not images:
        raise FormatError(f"{location}: neither a question nor an image")
    category = fmt.category(row) if callable(fmt.category) else \
        read_field(row, fmt.category, None) if fmt.category else None
    return Question(benchmark=benchmark, id=item_id, text=text, question=question.strip() or "(in the image)",
                    answers=tuple(answers), choices=choices, category=str(category or "all"),
                    images=tuple(images), judged=fmt.judged, location=location)


def _choices(row: Row, fmt: Format, location: str) -> tuple[str, ...] | None:
    if not fmt.choices:
        return None
    value = read_field(row, fmt.choices, None)
    if isinstance(value, str):  # MMMU stores the options as a Python list literal
        try:
            value = ast.literal_eval(value) if value.strip() else None
        except (ValueError, SyntaxError):
            try:
                value = json.loads(value)
            except ValueError:
                raise FormatError(f"{location}: field {fmt.choices!r} is not a list of options") from None
    if value is None or (isinstance(value, (list, tuple)) and not value):
        return None
    if not isinstance(value, (list, tuple)):
        raise FormatError(f"{location}: field {fmt.choices!r} is not a list of options")
    return tuple(str(choice) for choice in value)


def _images(row: Row, fmt: Format, file: Path, location: str) -> list[bytes | Path]:
    # relative paths: from the file's directory or an ancestor (the dataset root, above data/ or a config)
    ancestors = [file.parent, *list(file.parent.parents)[:2]]
    base_dirs = [base / d for base in ancestors for d in ("", *fmt.image_dirs)]
    images: list[bytes | Path] = []
    names = list(fmt.images)
    for position, name in enumerate([*names, fmt.image_path] if fmt.image_path else names):
        if position == len(names) and images:
            break  # the path field is a fallback only
        try:
            found = images_of(read_field(row, name, None), base_dirs)
            for image in found:
                image_dimensions(image)  # the header only: a broken image fails here, named
            images += found
        except ValueError as exc:
            raise FormatError(f"{location}: field {name!r}: {exc}") from None
    if fmt.needs_image and not images:
        raise FormatError(f"{location}: no image in field(s) {', '.join(fmt.images)}")
    return images
