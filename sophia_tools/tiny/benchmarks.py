"""Tiny sample files of every benchmark format ``sophia-eval`` reads, in the published schemas.

    python -m sophia_tools.tiny.benchmarks --out DIR      # prints NAME=PATH for sophia-eval run

What: for each format of ``evaluation.formats`` a directory laid out like the Hugging Face release
(or the official JSON) with two or three questions: parquet files whose image columns are
``datasets`` Image structs (``{bytes, path}``) or path strings with the image files beside them,
multi-image rows where the benchmark has them (MMMU, MMMU-Pro, MV-MATH, OlympiadBench), the
options as the benchmark stores them (a list, or MMMU's Python list literal), category columns,
the benchmark's own prompt fields (MathVista ``query``, MathVerse ``query_cot``), and rows a
reader must skip (an OlympiadBench proof). The questions are simple colour / shape questions
with known answers; images are small PNGs drawn here. Deterministic, offline, instant.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

_COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def png(colour: str, shape: str = "circle", side: int = 64) -> bytes:
    """A ``side`` x ``side`` PNG: one filled ``colour`` ``shape`` on white."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(image)
    box = (side // 8, side // 8, side - side // 8, side - side // 8)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=_COLOURS[colour])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _struct(data: bytes | None, name: str | None = None) -> dict[str, Any] | None:
    return None if data is None else {"bytes": data, "path": name}


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _mathvista(out: Path) -> Path:
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for pid, colour, question, choices, answer, kind in (
            ("1", "red", "What colour is the circle?", ["red", "green", "blue"], "red", "multi_choice"),
            ("2", "blue", "How many circles are in the image?", None, "1", "free_form")):
        (out / "images" / f"{pid}.png").write_bytes(png(colour))
        hint = ("Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at "
                "the end." if choices else "Hint: Please answer the question requiring an integer answer and "
                "provide the final value, e.g., 1, 2, 3, at the end.")
        options = "\nChoices:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices)) if choices else ""
        rows.append({"pid": pid, "question": question, "image": f"images/{pid}.png",
                     "decoded_image": _struct(png(colour), f"images/{pid}.png"), "choices": choices, "unit": None,
                     "precision": None, "answer": answer, "question_type": kind,
                     "answer_type": "text" if choices else "integer",
                     "metadata": {"category": "general-vqa", "context": "synthetic scene", "grade": "elementary school",
                                  "img_height": 64, "img_width": 64, "language": "english",
                                  "skills": ["arithmetic reasoning"], "source": "tiny", "split": "testmini",
                                  "task": "figure question answering" if choices else "math word problem"},
                     "query": f"{hint}\nQuestion: {question}{options}"})
    return _write_parquet(out / "data" / "testmini-00000-of-00001.parquet", rows)


def _mathvision(out: Path) -> Path:
    rows = [{"id": "1", "question": "<image1>\nWhich colour is the square?", "options": ["red", "green", "blue"],
             "image": "images/1.png", "decoded_image": _struct(png("green", "square"), "images/1.png"),
             "answer": "B", "solution": "", "level": 1, "subject": "metric geometry - area"},
            {"id": "2", "question": "<image1>\nHow many squares are shown?", "options": [],
             "image": "images/2.png", "decoded_image": _struct(png("red", "square"), "images/2.png"),
             "answer": "1", "solution": "", "level": 2, "subject": "counting"}]
    return _write_parquet(out / "data" / "testmini-00000-of-00001.parquet", rows)


def _mathverse(out: Path) -> Path:
    rows = []
    for index, (version, question) in enumerate((("Text Dominant", "The circle is red, green or blue. Which?"),
                                                 ("Vision Only", ""))):
        rows.append({"sample_index": str(index + 1), "problem_index": "1", "problem_version": version,
                     "question": question, "image": _struct(png("red"), f"{index + 1}.png"), "answer": "red",
                     "question_type": "free-form",
                     "metadata": {"split": "testmini", "source": "tiny", "subject": "Plane Geometry",
                                  "subfield": "Colour"},
                     "query_wo": question or "According to the question shown in the image, answer it.",
                     "query_cot": ("Please first conduct reasoning, and then answer the question and provide the "
                                   f"final value at the end.\nQuestion: {question}" if question else
                                   "According to the question shown in the image, please first conduct reasoning, "
                                   "and then answer the question and provide the final value at the end."),
                     "question_for_eval": question or "Which colour is the circle?"})
    return _write_parquet(out / "testmini" / "testmini-00000-of-00001.parquet", rows)


def _dynamath(out: Path) -> Path:
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "images" / "2.png").write_bytes(png("yellow"))
    rows = [{"id": "1", "question": "Which colour is the circle?\nChoices:\n(A) red\n(B) blue", "image": "images/1.png",
             "decoded_image": _struct(png("blue"), "images/1.png"), "ground_truth": "B",
             "answer_type": "multiple choice", "subject": "graph theory", "knowledge_level": "high school"},
            {"id": "2", "question": "What is the radius of the circle divided by itself?", "image": "images/2.png",
             "decoded_image": None, "ground_truth": "1.000", "answer_type": "float", "subject": "algebra",
             "knowledge_level": "undergraduate"}]
    return _write_parquet(out / "data" / "sample_variant1-00000-of-00001.parquet", rows)


def _mmmu_images(*images: bytes | None) -> dict[str, Any]:
    return {f"image_{i + 1}": _struct(images[i] if i < len(images) else None, f"{i + 1}.png") for i in range(7)}


def _mmmu(out: Path) -> Path:
    rows = [{"id": "validation_Math_1", "question": "<image 1> <image 2> Which image shows a green circle?",
             "options": "['<image 1>', '<image 2>']", "explanation": "", **_mmmu_images(png("red"), png("green")),
             "img_type": "['Diagrams']", "answer": "B", "topic_difficulty": "Easy",
             "question_type": "multiple-choice", "subfield": "Geometry"},
            {"id": "validation_Art_Theory_2", "question": "<image 1> How many circles are there?", "options": "[]",
             "explanation": "", **_mmmu_images(png("blue")), "img_type": "['Paintings']", "answer": "['1', 'one']",
             "topic_difficulty": "Medium", "question_type": "open", "subfield": "Counting"}]
    return _write_parquet(out / "Math" / "validation-00000-of-00001.parquet", rows)


def _mmmu_pro(out: Path) -> tuple[Path, Path]:
    options = str(["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink", "grey"])
    standard = [{"id": "test_Math_1", "question": "<image 1> <image 2> Which colour do both circles share?",
                 "options": options, "explanation": "", **_mmmu_images(png("blue"), png("blue")),
                 "img_type": "['Diagrams']", "answer": "C", "topic_difficulty": "Easy", "subject": "Math"},
                {"id": "test_Art_2", "question": "<image 1> What colour is the square?", "options": options,
                 "explanation": "", **_mmmu_images(png("yellow", "square")), "img_type": "['Paintings']",
                 "answer": "D", "topic_difficulty": "Easy", "subject": "Art"}]
    vision = [{"id": "test_Math_1", "image": _struct(png("green"), "1.png"), "options": options, "answer": "B",
               "subject": "Math"}]
    return (_write_parquet(out / "standard (10 options)" / "test-00000-of-00001.parquet", standard),
            _write_parquet(out / "vision" / "test-00000-of-00001.parquet", vision))


def _mv_math(out: Path) -> Path:
    (out / "images").mkdir(parents=True, exist_ok=True)
    for name, colour in (("1_1.png", "red"), ("1_2.png", "blue"), ("2_1.png", "green")):
        (out / "images" / name).write_bytes(png(colour))
    rows = [{"problem_id": 1, "question": "Which figure shows a blue circle?\nA.\n\n<image_1>\nB.\n\n<image_2>",
             "input_image": ["1_1.png", "1_2.png"], "is_multi_img": True, "answer": "B", "answer_type": "choice",
             "difficulty": "Low", "grade": "Junior", "subject": "Solid Geometry", "image_relavance": "0",
             "analysis": ""},
            {"problem_id": 2, "question": "<image_1>\nHow many circles are there?", "input_image": ["2_1.png"],
             "is_multi_img": False, "answer": "1", "answer_type": "free_form", "difficulty": "Low",
             "grade": "Elementary", "subject": "Arithmetic", "image_relavance": "1", "analysis": ""}]
    path = out / "MV-MATH.json"
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return path


def _olympiad_row(item_id: int, question: str, answer: list[str], images: tuple[bytes, ...], **extra: Any) -> dict:
    row = {"id": item_id, "question": question, "solution": [""], "final_answer": answer, "context": None,
           **{f"image_{i + 1}": _struct(images[i] if i < len(images) else None) for i in range(5)},
           "modality": "Multimodal" if images else "Text-only", "difficulty": "Competition",
           "is_multiple_answer": False, "unit": None, "answer_type": "Numerical", "error": None,
           "question_type": "Open-ended", "subfield": "Algebra", "subject": "Math", "language": "English"}
    row.update(extra)
    return row


def _olympiadbench(out: Path) -> Path:
    _write_parquet(out / "OE_MM_maths_en_COMP" / "train-00000-of-00001.parquet", [
        _olympiad_row(1001, "<image_1> <image_2> How many circles are drawn in the two images together?", ["$2$"],
                      (png("red"), png("blue")))])
    _write_parquet(out / "OE_TO_maths_en_COMP" / "train-00000-of-00001.parquet", [
        _olympiad_row(2001, "Compute $1+2$.", ["$3$"], ()),
        _olympiad_row(2002, "Find all real x with $x^2=4$.", ["$2$", "$-2$"], (), is_multiple_answer=True)])
    _write_parquet(out / "TP_TO_maths_en_COMP" / "train-00000-of-00001.parquet", [
        _olympiad_row(3001, "Prove that $1+1=2$.", [], (), question_type="Theorem proof")])
    return out


def _generic(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "q1.png").write_bytes(png("red"))
    (out / "q2.png").write_bytes(png("green", "square"))
    rows = [{"id": "q1", "image": "q1.png", "question": "What colour is the circle?", "answer": "red",
             "category": "easy"},
            {"id": "q2", "image": "q2.png", "question": "Which shape is shown?", "answer": "B",
             "choices": ["circle", "square"], "category": "hard"}]
    path = out / "questions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def build_benchmarks(root: str | Path) -> dict[str, tuple[str, Path]]:
    """Write every sample under ``root``; returns ``{name: (format, path)}`` (one entry per benchmark)."""
    root = Path(root)
    standard, vision = _mmmu_pro(root / "MMMU_Pro")
    return {
        "mathvista": ("mathvista", _mathvista(root / "MathVista")),
        "mathvision": ("mathvision", _mathvision(root / "MathVision")),
        "mathverse": ("mathverse", _mathverse(root / "MathVerse")),
        "dynamath": ("dynamath", _dynamath(root / "DynaMath_Sample")),
        "mmmu": ("mmmu", _mmmu(root / "MMMU")),
        "mmmu_pro_standard": ("mmmu_pro_standard", standard),
        "mmmu_pro_vision": ("mmmu_pro_vision", vision),
        "mv_math": ("mv_math", _mv_math(root / "MV-MATH")),
        "olympiadbench": ("olympiadbench", _olympiadbench(root / "OlympiadBench")),
        "generic": ("jsonl", _generic(root / "generic")),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sophia_tools.tiny.benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for the sample benchmarks")
    args = parser.parse_args(argv)
    for name, (format_name, path) in build_benchmarks(args.out).items():
        spec = name if name == format_name else f"{name}:{format_name}"
        print(f"{spec}={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
