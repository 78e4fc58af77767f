"""pass@1 ± s.e., pass@K, per category, and compare's paired bootstrap on runs with known verdicts."""

from __future__ import annotations

import json
import math

import pytest

from evaluation.metrics import by_category, paired_bootstrap, per_question, summarize
from sophia_tools.eval_cli import main as eval_main


def records(correct_by_question: dict[str, list[bool]], category: str = "all") -> list[dict]:
    return [{"id": item_id, "sample": sample, "correct": correct, "category": category, "tokens": 10 + sample,
             "finish_reason": "length" if sample == 0 else "stop"}
            for item_id, flags in correct_by_question.items() for sample, correct in enumerate(flags)]


def test_pass_at_1_se_and_pass_at_k():
    """Four questions, K=2: rates 1, .5, .5, 0 -> pass@1 50, s.e. sqrt(var/n), pass@2 75."""
    questions = per_question(records({"a": [True, True], "b": [True, False], "c": [False, True],
                                      "d": [False, False]}), samples=2)
    summary = summarize(questions)
    rates = [1, .5, .5, 0]
    se = math.sqrt(sum((r - .5) ** 2 for r in rates) / 3 / 4)
    assert summary["pass@1"] == 50.0 and summary["pass@k"] == 75.0
    assert summary["pass@1_se"] == pytest.approx(100 * se, abs=0.01)
    assert summary["mean_tokens"] == 10.5 and summary["truncation_rate"] == 50.0


def test_incomplete_questions_are_left_out():
    """A question with fewer verdicts than K (still running, or a server failure) must not count as wrong."""
    rows = records({"a": [True, True], "b": [False]})
    rows.append({"id": "c", "sample": 0, "correct": None, "category": "all"})
    assert set(per_question(rows, samples=2)) == {"a"}


def test_categories():
    rows = records({"a": [True]}, "geometry") + records({"b": [False], "c": [True]}, "algebra")
    got = by_category(per_question(rows, 1))
    assert {name: c["pass@1"] for name, c in got.items()} == {"algebra": 50.0, "geometry": 100.0}


def test_paired_bootstrap_interval_covers_the_known_difference():
    """B solves 30 of the 100 questions A fails (and loses none): delta +30, interval near it, above 0."""
    a = {str(i): float(i < 30) for i in range(100)}
    b = {str(i): float(i < 60) for i in range(100)}
    result = paired_bootstrap(a, b, resamples=4000, seed=1)
    assert result["n"] == 100 and result["delta"] == 30.0
    assert 19 < result["low"] < 30 < result["high"] < 41
    same = paired_bootstrap(a, a, resamples=500)
    assert same["delta"] == same["low"] == same["high"] == 0.0


def write_run(root, name, correct_by_question):
    """An evaluation dir holding one benchmark with the given verdicts (what sophia-eval run writes)."""
    directory = root / name
    directory.mkdir(parents=True)
    rows = records(correct_by_question)
    (directory / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"benchmark": name, "samples": 1, "model": str(root), **summarize(per_question(rows, 1))}
    (directory / "benchmark.json").write_text(json.dumps(summary))


def test_compare_prints_delta_and_interval(tmp_path, capsys):
    """``sophia-eval compare``: +40 points on one benchmark (interval excludes 0), 0 on the other."""
    for run, solved in (("base", 20), ("sophia", 60)):
        write_run(tmp_path / run, "mathvista", {f"q{i}": [i < solved] for i in range(100)})
        write_run(tmp_path / run, "mmmu", {f"q{i}": [i % 2 == 0] for i in range(50)})
    assert eval_main(["compare", str(tmp_path / "base"), str(tmp_path / "sophia"), "--resamples", "2000"]) == 0
    out = capsys.readouterr().out
    vista = next(line for line in out.splitlines() if line.startswith("| mathvista"))
    cells = [cell.strip() for cell in vista.strip("|").split("|")]
    assert cells[:5] == ["mathvista", "100", "20.0", "60.0", "+40.00"]
    low, high = (float(x) for x in cells[5].strip("[]").split(","))
    assert 28 < low < 40 < high < 52
    assert "| mmmu | 50 | 50.0 | 50.0 | +0.00 | [+0.00, +0.00] |" in out
    written = tmp_path / "sophia" / "compare_vs_base"
    assert json.loads((written / "compare.json").read_text())["benchmarks"]["mathvista"]["delta"] == 40.0
    assert (written / "compare.png").read_bytes().startswith(b"\x89PNG")


def test_compare_without_shared_benchmarks_is_a_user_error(tmp_path, capsys):
    write_run(tmp_path / "a", "mathvista", {"q": [True]})
    write_run(tmp_path / "b", "mmmu", {"q": [True]})
    assert eval_main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "share no benchmark" in capsys.readouterr().err
