"""``sophia-rollout check``: run as a user would, ``python -m sophia_tools.rollout_cli check --in FILE`` from the repo root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_check(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sophia_tools.rollout_cli", "check", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_check_prints_one_result_per_line_in_order(tmp_path):
    rows = [
        {"response": "<think>hmm</think> So $\\boxed{\\dfrac{1}{2}}$.", "answer": "0.5"},
        {"response": "<think>never finished", "answer": "3"},
        {"response": "The answer is (b).", "answer": "B"},
        {"response": "\\boxed{x^2-1}", "answer": "(x-1)(x+1)"},
        {"response": None, "answer": 5},
        {"response": "\\boxed{14}", "answer": "B", "choices": ["10", "12", "14"]},
        {"response": "\\boxed{(1,2)}", "answer": "[1,2)"},
        {"response": "Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "answer": "0.75"},
        {"response": "So $\\boxed{-x \\geq -5}$.", "answer": "x \\le 5"},
        {"response": "\\boxed{0}", "answer": "3x+4y+14=0"},
    ]
    lines = [json.dumps(row) for row in rows]
    lines.insert(3, "")  # blank lines are skipped, not inputs
    path = write_lines(tmp_path / "in.jsonl", lines)
    done = run_check("--in", str(path), "--timeout", "20", "--workers", "2")
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in done.stdout.splitlines()]
    assert out == [
        {"correct": True, "extracted": "\\dfrac{1}{2}", "reason": "numeric"},
        {"correct": False, "extracted": None, "reason": "unfinished_think"},
        {"correct": True, "extracted": "(b)", "reason": "choice"},
        {"correct": True, "extracted": "x^2-1", "reason": "symbolic"},
        {"correct": False, "extracted": None, "reason": "no_answer"},
        {"correct": False, "extracted": "14", "reason": "choice"},
        {"correct": False, "extracted": "(1,2)", "reason": "structure"},
        {"correct": True, "extracted": "\\frac{3}{4}", "reason": "numeric"},
        {"correct": True, "extracted": "-x \\geq -5", "reason": "math_verify"},
        {"correct": False, "extracted": "0", "reason": "structure"},  # a part of the gold equation
    ]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"response": "x", "answer": ', "not valid JSON"),
        ('["x", "5"]', "expected a JSON object"),
        ('{"response": "x"}', "missing key(s) 'answer'"),
        ('{"response": 5, "answer": "5"}', "'response' must be a string or null"),
        ('{"response": "x", "answer": {"a": 1}}', "'answer' must be a string or a number"),
    ],
)
def test_a_malformed_line_is_named_with_file_and_line(tmp_path, bad_line, message):
    good = json.dumps({"response": "\\boxed{1}", "answer": "1"})
    path = write_lines(tmp_path / "bad.jsonl", [good, "", bad_line, good])
    done = run_check("--in", str(path))
    assert done.returncode == 2
    assert f"{path}:3: " in done.stderr and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_missing_file_and_bad_options_exit_2(tmp_path):
    missing = run_check("--in", str(tmp_path / "absent.jsonl"))
    assert missing.returncode == 2 and "absent.jsonl: no such file" in missing.stderr
    path = write_lines(tmp_path / "ok.jsonl", [json.dumps({"response": "1", "answer": "1"})])
    bad_workers = run_check("--in", str(path), "--workers", "0")
    assert bad_workers.returncode == 2 and "--workers" in bad_workers.stderr
    no_input = run_check()
    assert no_input.returncode == 2 and "--in" in no_input.stderr
