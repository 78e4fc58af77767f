"""The labelled verifier table (``verifier_cases.jsonl``) and the extraction / equivalence rules.

Every case is ``{"response", "answer", "expected", "note"[, "choices"]}`` and goes through
``VerifierPool.verify_batch`` — the entry point the rollout score stage uses — in one batch, so a
failing run lists every mismatch at once. The notes group the cases by the rule they pin (and by
the known failure modes of OlympiadBench's judger and math-verify they guard against); notes that
start with "issue 20:" are the confirmed defects of the verifier issue (reward hacking by a part of
the gold, hedging, choice letters, the Minerva ending, inequalities, spellings, prose, boxes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.verifier import NeedsSympy, VerifierPool, compare_answers, extract_answer
from rollout.verifier.normalize import Group, Scalar, parse_answer

CASES_PATH = Path(__file__).with_name("verifier_cases.jsonl")
REPO_ROOT = Path(__file__).resolve().parents[2]


def load_cases() -> list[dict]:
    return [json.loads(line) for line in CASES_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]


def _describe(case: dict, result) -> str:
    return (
        f"  [{case['note']}] response={case['response']!r} gold={case['answer']!r} "
        f"expected={case['expected']} got={result.correct} (extracted={result.extracted!r}, reason={result.reason})"
    )


@pytest.fixture(scope="module")
def pool():
    with VerifierPool(workers=2, timeout_s=20.0) as verifier_pool:
        yield verifier_pool


def test_table_is_large_and_balanced():
    cases = load_cases()
    assert len(cases) >= 200
    positives = sum(case["expected"] for case in cases)
    assert 0.25 * len(cases) < positives < 0.85 * len(cases)
    notes = " | ".join(sorted({case["note"] for case in cases}))
    for topic in ("thousands", "percent", "degrees", "units", "intervals", "tuples", "sets", "plus-minus",
                  "multiple choice", "scientific", "unicode minus", "think", "plain-text equations",
                  "reward hacking", "hedging", "article is not a label", "final-answer sentence",
                  "inequalities", "doubled backslashes", "pct", "ratios", "prose", "display blocks",
                  "several boxes", "decimal comma"):  # fmt: skip
        assert topic in notes, topic


def test_every_case_verifies_as_labelled(pool):
    cases = load_cases()
    results = pool.verify_batch(cases)
    assert len(results) == len(cases)
    mismatches = [
        _describe(case, result) for case, result in zip(cases, results) if result.correct != case["expected"]
    ]
    assert not mismatches, f"{len(mismatches)} of {len(cases)} cases mismatched:\n" + "\n".join(mismatches)


@pytest.mark.slow
def test_parent_fast_path_agrees_with_the_workers():
    """Every verdict the parent decides without SymPy is the one a worker reaches with it."""
    cases = load_cases()
    with VerifierPool(workers=2, timeout_s=20.0, fast_path=False) as slow_pool:
        in_workers = slow_pool.verify_batch(cases)
        assert slow_pool.stats["in_worker"] > 0.5 * len(cases)
    with VerifierPool(workers=2, timeout_s=20.0) as fast_pool:
        fast = fast_pool.verify_batch(cases)
        assert fast_pool.stats["fast_path"] > 0.5 * len(cases)
    differ = [_describe(case, a) for case, a, b in zip(cases, fast, in_workers) if a.correct != b.correct]
    assert not differ, "\n".join(differ)


def test_reasons_for_answers_that_cannot_score(pool):
    items = [
        ("<think>I think it is \\boxed{4} but", "4"),
        ("", "4"),
        ("\\boxed{4}", ""),
        ({"response": "\\boxed{4}", "answer": "4", "truncated": True}),
        ("\\boxed{4}", "4"),
    ]
    reasons = [result.reason for result in pool.verify_batch(items)]
    assert reasons == ["unfinished_think", "no_answer", "empty_gold", "truncated", "exact"]


@pytest.mark.parametrize(
    ("response", "answer", "how"),
    [
        ("a \\boxed{1} b \\fbox{2} c", "2", "boxed"),
        ("\\boxed{\\frac{a}{\\sqrt{b}}}", "\\frac{a}{\\sqrt{b}}", "boxed"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}", "boxed"),
        ("<think>\\boxed{1}</think>\nFinal answer: 3.5. Done", "3.5", "phrase"),
        ("We get\n$x = 2$", "x = 2", "last_line"),
        ("<think>\\boxed{1}", None, "unfinished_think"),
        ("x" * 200, None, "no_answer"),
    ],
)
def test_extraction_rules(response, answer, how):
    extraction = extract_answer(response)
    assert (extraction.answer, extraction.how) == (answer, how)


def test_extraction_is_linear_on_long_and_unbalanced_text():
    long_response = "<think>" + "x = 1 + 2. " * 50_000 + "</think>" + "{" * 20_000 + "\\boxed{" + "{" * 20_000
    assert extract_answer(long_response).answer is None


def test_answer_structure_rules():
    assert parse_answer("1,000") == Scalar("1000")
    assert parse_answer("1,2").kind == "list"
    interval = parse_answer("\\left[ 1, 2 \\right)")
    assert isinstance(interval, Group) and (interval.kind, interval.open, interval.close) == (
        "bracket",
        "[",
        ")",
    )
    assert parse_answer("5\\text{ cm}^2") == Scalar("5")
    assert parse_answer("50\\%") == Scalar("50", percent=True)
    assert parse_answer("x = 1 \\pm 2").kind == "list"


def test_cheap_checks_never_touch_sympy_and_hard_ones_ask_for_it():
    with pytest.raises(NeedsSympy):
        compare_answers("\\sqrt{8}", "2\\sqrt2", allow_sympy=False)
    code = (
        "import sys; from rollout.verifier import compare_answers as c\n"
        "assert c('0.5', '\\\\frac12', allow_sympy=False).correct\n"
        "assert not c('(1,2)', '[1,2)', allow_sympy=False).correct\n"
        "assert 'sympy' not in sys.modules and 'latex2sympy2_extended' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
