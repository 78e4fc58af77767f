"""The rules + Math-Verify verifier: Math-Verify's own public test suite, hang bait, the soft-limit retry.

``verifier_mathverify_suite.jsonl`` holds the 262 (gold, prediction, expected) cases parametrised
in the public test suite of huggingface/Math-Verify (``tests/``, commit 5d148cf, Apache-2.0), one
row each with its pytest node id in ``source``; ``response`` is the prediction as a model would
write it (bare or single-``$`` answers wrapped in ``\\boxed{}``, prose left as is).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from rollout.verifier import VerifierPool, is_unfinished_think, verify_batch
from rollout.verifier.decide import RULES_TIMEOUT
from rollout.verifier.mathverify import mathverify_compare

SUITE = Path(__file__).with_name("verifier_mathverify_suite.jsonl")
THIS_MODULE = "tests.rollout.test_verifier_mathverify"
HANG_BAIT = ["10^{10^{10^{10}}}", "5^{5^{5^{5^5}}}", "\\frac{1}{" * 60 + "2" + "}" * 60, "100000!"]
pytestmark = pytest.mark.timeout(300)


def rules_overrun_compare(extracted: str, gold: str, choices, context) -> tuple[bool, str]:
    """Runs in a worker: the first try reports that the rules overran; the retry must skip them."""
    if not context.get("skip_rules"):
        return False, RULES_TIMEOUT
    return extracted == gold, "retried"


@pytest.mark.slow
def test_agreement_with_math_verify_public_suite_is_at_least_95_percent():
    rows = [json.loads(line) for line in SUITE.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) == 262
    items = [{"response": row["response"], "answer": row["gold"]} for row in rows]
    with VerifierPool(workers=2, timeout_s=10.0) as pool:
        results = pool.verify_batch(items)
    wrong = [(row["source"], result) for row, result in zip(rows, results) if result.correct != row["expected"]]
    false_positives = [source for (source, result) in wrong if result.correct]
    assert len(wrong) <= 0.05 * len(rows), "\n".join(f"{source}: {result}" for source, result in wrong)
    assert len(false_positives) <= 2, false_positives  # two suite cases contradict each other by flag
    assert all(result.reason for result in results)


def test_math_verify_runs_with_its_signal_timeouts_off():
    """Math-Verify's default timeouts use SIGALRM, which raises outside the main thread."""
    verdicts = []
    thread = threading.Thread(
        target=lambda: verdicts.append(mathverify_compare("\\boxed{\\frac{1}{2}}", "0.5")), daemon=True
    )
    thread.start()
    thread.join(timeout=120)
    assert verdicts == [(True, "math_verify")]


@pytest.mark.slow
def test_hang_bait_never_hangs_and_is_never_rewarded():
    items = [(f"The answer is $\\boxed{{{bait}}}$.", str(k + 2)) for k, bait in enumerate(HANG_BAIT)]
    start = time.monotonic()
    with VerifierPool(workers=2, timeout_s=1.5) as pool:
        results = pool.verify_batch(items)
        again = pool.verify_batch([("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")])  # still usable afterwards
    elapsed = time.monotonic() - start
    assert len(results) == len(HANG_BAIT) and not any(result.correct for result in results)
    assert {result.reason for result in results} <= {"timeout", "mismatch", "unparsable", "memory"}
    assert again[0].correct
    assert elapsed < 4 * (0.75 + 1.5) + 60, elapsed  # soft limit + retry per item, plus worker start-up


def test_rules_that_overrun_are_retried_in_a_fresh_worker():
    with VerifierPool(workers=1, timeout_s=10, compare=f"{THIS_MODULE}:rules_overrun_compare") as pool:
        results = pool.verify_batch([("\\boxed{7}", "7"), ("\\boxed{8}", "9")])
        assert pool.stats["retries"] == 2 and pool.stats["restarts"] == 2
    assert [(result.correct, result.reason) for result in results] == [(True, "retried"), (False, "retried")]


@pytest.mark.parametrize(
    ("text", "unfinished"),
    [
        ("<think>still thinking \\boxed{5}", True),
        ("<think>done</think> \\boxed{5}", False),
        ("started inside the template's think block</think> \\boxed{5}", False),
        ("no think block at all: \\boxed{5}", False),
        ("", False),
        (None, False),
    ],
)
def test_is_unfinished_think(text, unfinished):
    assert is_unfinished_think(text) is unfinished


def test_an_unfinished_think_scores_zero_with_its_reason():
    [result] = verify_batch([("<think>I am sure it is \\boxed{4}", "4")])
    assert (result.correct, result.reason, result.extracted) == (False, "unfinished_think", None)
