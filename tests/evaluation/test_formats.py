"""Benchmark readers: every published format's sample file, and bad files / rows / fields named."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.formats import FORMATS, read_benchmark
from evaluation.readers import FormatError
from sophia_tools.tiny.benchmarks import build_benchmarks, png


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return build_benchmarks(tmp_path_factory.mktemp("bench"))


def read(samples, name, hint=True):
    format_name, path = samples[name]
    return {q.id: q for q in read_benchmark(name, format_name, path, hint)}


def test_every_format_has_a_sample(samples):
    assert {format_name for format_name, _ in samples.values()} == set(FORMATS)


# What each sample must read as: id -> (gold answers, number of images, category).
EXPECTED = {
    "mathvista": {"1": (("red",), 1, "figure question answering"), "2": (("1",), 1, "math word problem")},
    "mathvision": {"1": (("B",), 1, "metric geometry - area"), "2": (("1",), 1, "counting")},
    "mathverse": {"1": (("red",), 1, "Text Dominant"), "2": (("red",), 1, "Vision Only")},
    "dynamath": {"1": (("B",), 1, "graph theory"), "2": (("1.000",), 1, "algebra")},
    "mmmu": {"validation_Math_1": (("B",), 2, "Math"), "validation_Art_Theory_2": (("1", "one"), 1, "Art_Theory")},
    "mmmu_pro_standard": {"test_Math_1": (("C",), 2, "Math"), "test_Art_2": (("D",), 1, "Art")},
    "mmmu_pro_vision": {"test_Math_1": (("B",), 1, "Math")},
    "mv_math": {"1": (("B",), 2, "Solid Geometry"), "2": (("1",), 1, "Arithmetic")},
    "olympiadbench": {"1001": (("2",), 2, "Multimodal/Math"), "2001": (("3",), 0, "Text-only/Math"),
                      "2002": (("2, -2",), 0, "Text-only/Math")},
    "generic": {"q1": (("red",), 1, "easy"), "q2": (("B",), 1, "hard")},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_reads_as_published(samples, name):
    """Catches a wrong field name, a lost image of a multi-image row, a proof question kept, a bad gold."""
    questions = read(samples, name)
    got = {item_id: (q.answers, len(q.images), q.category) for item_id, q in questions.items()}
    assert got == EXPECTED[name]
    for question in questions.values():
        for image in question.images:
            data = image if isinstance(image, bytes) else image.read_bytes()
            assert data.startswith(b"\x89PNG")


def test_hints_come_first_and_can_be_switched_off(samples):
    """The benchmark's own prompt (MathVista query) or hint goes before the question; off: the bare question."""
    vista = read(samples, "mathvista")["1"]
    assert vista.text.startswith("Hint: Please answer") and vista.text.endswith("(C) blue")
    assert vista.choices == ("red", "green", "blue")
    bare = read(samples, "mathvista", hint=False)["1"]
    assert bare.text == "What colour is the circle?\nChoices:\n(A) red\n(B) green\n(C) blue"
    olympiad = read(samples, "olympiadbench")["2002"]
    assert olympiad.text.index("multiple answers") < olympiad.text.index("Find all real x")
    assert read(samples, "olympiadbench", hint=False)["2002"].text == "Find all real x with $x^2=4$."
    vision = read(samples, "mmmu_pro_vision")["test_Math_1"]
    assert "Choices" not in vision.text and vision.choices[1] == "green"  # options live in the image


def test_mathverse_vision_only_keeps_its_official_prompt(samples):
    question = read(samples, "mathverse")["2"]
    assert question.text.startswith("According to the question shown in the image")


def test_image_path_fallback_and_embedded_bytes(samples):
    """DynaMath row 2 has no embedded image: its path column is used; row 1 uses the embedded bytes."""
    questions = read(samples, "dynamath")
    assert isinstance(questions["1"].images[0], bytes)
    assert questions["2"].images[0].name == "2.png"


def _parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_missing_field_names_file_row_and_field(tmp_path):
    path = _parquet(tmp_path / "vista.parquet", [
        {"pid": "1", "question": "q", "answer": "a", "decoded_image": {"bytes": png("red"), "path": None}},
        {"pid": "2", "question": "q", "decoded_image": {"bytes": png("red"), "path": None}}])
    with pytest.raises(FormatError, match=r"vista\.parquet:row 1: field 'answer' is empty"):
        read_benchmark("mathvista", "mathvista", path)
    (tmp_path / "g.jsonl").write_text('{"id": "a", "question": "q"}\n')
    with pytest.raises(FormatError, match=r"g\.jsonl:row 0: field 'answer' is missing"):
        read_benchmark("g", "jsonl", tmp_path / "g.jsonl")


def test_broken_image_names_the_field(tmp_path):
    path = _parquet(tmp_path / "vision.parquet", [
        {"id": "1", "question": "q", "answer": "B", "options": ["x", "y"],
         "decoded_image": {"bytes": b"not an image", "path": None}}])
    with pytest.raises(FormatError, match=r"vision\.parquet:row 0: field 'decoded_image': cannot read"):
        read_benchmark("mathvision", "mathvision", path)


def test_missing_image_file_and_duplicate_ids(tmp_path):
    rows = [{"problem_id": 1, "question": "q", "answer": "1", "input_image": ["absent.png"]}]
    (tmp_path / "mv.json").write_text(json.dumps(rows))
    with pytest.raises(FormatError, match=r"mv\.json:row 0: field 'input_image': image file 'absent.png' not found"):
        read_benchmark("mv_math", "mv_math", tmp_path / "mv.json")
    (tmp_path / "q.png").write_bytes(png("red"))
    lines = [{"id": "a", "image": "q.png", "question": "q", "answer": "1"}] * 2
    (tmp_path / "dup.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(FormatError, match=r"dup\.jsonl:row 1: field 'id': id 'a' repeats .*dup\.jsonl:row 0"):
        read_benchmark("g", "jsonl", tmp_path / "dup.jsonl")


def test_bad_files(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(FormatError, match=r"bad\.parquet: unreadable parquet"):
        read_benchmark("m", "mmmu", tmp_path / "bad.parquet")
    (tmp_path / "bad.jsonl").write_text('\nnot json\n')
    with pytest.raises(FormatError, match=r"bad\.jsonl:line 2: not JSON"):
        read_benchmark("g", "jsonl", tmp_path / "bad.jsonl")
    with pytest.raises(FormatError, match="unknown format 'nope'"):
        read_benchmark("g", "nope", tmp_path / "bad.jsonl")
    with pytest.raises(FormatError, match="no such benchmark file"):
        read_benchmark("g", "jsonl", tmp_path / "absent.jsonl")


def test_ids_repeated_across_files_are_qualified_by_file(tmp_path):
    """DynaMath's ten variant files reuse the seed question ids: each copy gets its file as a prefix."""
    for variant in ("sample_variant1", "sample_variant2"):
        _parquet(tmp_path / f"{variant}.parquet", [
            {"id": "7", "question": "q", "ground_truth": "1", "decoded_image": {"bytes": png("red"), "path": None}},
            {"id": f"only-{variant}", "question": "q", "ground_truth": "1",
             "decoded_image": {"bytes": png("red"), "path": None}}])
    ids = sorted(q.id for q in read_benchmark("dynamath", "dynamath", tmp_path))
    assert ids == ["only-sample_variant1", "only-sample_variant2", "sample_variant1/7", "sample_variant2/7"]
    # a glob pattern picks files (MMMU: only the validation files of every subject dir)
    assert sorted(q.id for q in read_benchmark("dynamath", "dynamath", tmp_path / "*variant2.parquet")) == \
        ["7", "only-sample_variant2"]
