"""``sophia-profile verifier --cases FILE --against math-verify``, run as a user would (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CASES = [
    {"response": "So $\\boxed{\\dfrac{1}{2}}$.", "answer": "0.5", "expected": True},
    {"response": "<think>I am sure it is \\boxed{4} but let me check", "answer": "4", "expected": False},
    {"response": "\\boxed{0}", "gold": "$3x+4y+14=0$", "expected": False},
    {"response": "The triangle is \\boxed{a right triangle}.", "answer": "B", "expected": True,
     "choices": ["obtuse triangle", "right triangle"]},
    {"response": "\\boxed{7}", "answer": "8", "expected": False},
]


def run_profile(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sophia_tools.profile_cli", "verifier", *args]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_cases_are_scored_for_both_verifiers_in_one_run(tmp_path):
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(json.dumps(case) for case in CASES) + "\n", encoding="utf-8")
    done = run_profile("--cases", str(path), "--against", "math-verify", "--timeout", "10")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["n"], report["positives"]) == (5, 2)
    ours, theirs = report["ours"], report["math_verify"]
    assert (ours["accuracy"], ours["false_positives"], ours["false_negatives"]) == (1.0, 0, 0)
    assert theirs["false_positives"] >= 1  # it rewards the answer inside the unfinished think block
    assert theirs["accuracy"] == 1 - (theirs["false_positives"] + theirs["false_negatives"]) / 5
    assert ours["verdicts_per_s"] > 0 and report["speed_ratio"] > 0
    assert sum(ours["reasons"].values()) == 5 and "unfinished_think" in ours["reasons"]
    bait = report["hang_bait"]
    assert (bait["items"], bait["hangs"], bait["rewarded"]) == (4, 0, 0)


def test_bad_case_files_and_options_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(CASES[0]) + "\n" + json.dumps({"response": "x", "answer": "1"}) + "\n")
    done = run_profile("--cases", str(bad))
    assert done.returncode == 2 and f"{bad}:2:" in done.stderr and "expected" in done.stderr
    assert "Traceback" not in done.stderr
    alone = run_profile("--against", "math-verify")
    assert alone.returncode == 2 and "--cases" in alone.stderr
