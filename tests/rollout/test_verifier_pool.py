"""The verification pool: hard time limits, killed and replaced workers, order, clean shutdown.

A check that would hang is injected through ``VerifierPool(compare="module:function")``: the
functions below run inside the worker processes.
"""

from __future__ import annotations

import multiprocessing
import os
import time

import psutil
import pytest

from rollout.verifier import VerifierPool, verify_batch

THIS_MODULE = "tests.rollout.test_verifier_pool"
pytestmark = pytest.mark.timeout(120)  # a pool that failed to kill would otherwise hang the suite


def sleepy_compare(extracted: str, gold: str, choices) -> tuple[bool, str]:
    """Hangs on gold ``HANG``, crashes the process on ``CRASH``, hogs memory on ``HOG``."""
    if gold == "HANG":
        time.sleep(600)
    if gold == "CRASH":
        os._exit(3)
    if gold == "HOG":
        hog = bytearray(4 * 2**30)
        return bool(hog), "hogged"
    if gold.startswith("NAP"):
        time.sleep(float(gold[3:]))
        return True, "napped"
    return extracted == gold, "exact"


def _assert_all_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        if not alive:
            break
        time.sleep(0.05)
    assert not alive, f"worker processes left behind: {alive}"
    assert multiprocessing.active_children() == []


def test_a_hanging_check_is_killed_and_later_items_still_verify():
    items = [
        ("\\boxed{1}", "1"),
        ("\\boxed{2}", "HANG"),
        ("\\boxed{3}", "3"),
        ("\\boxed{4}", "HANG"),
        ("\\boxed{5}", "6"),
    ]
    seen_pids: set[int] = set()
    with VerifierPool(workers=1, timeout_s=1.0, compare=f"{THIS_MODULE}:sleepy_compare") as pool:
        start = time.monotonic()
        results = pool.verify_batch(items)
        elapsed = time.monotonic() - start
        seen_pids.update(pool.worker_pids())
        assert pool.stats["timeouts"] == 2 and pool.stats["restarts"] == 2
        again = pool.verify_batch([("\\boxed{7}", "7")])  # the pool is still usable
        seen_pids.update(pool.worker_pids())
    assert [(result.correct, result.reason) for result in results] == [
        (True, "exact"), (False, "timeout"), (True, "exact"), (False, "timeout"), (False, "exact"),
    ]  # fmt: skip
    assert [result.extracted for result in results] == ["1", "2", "3", "4", "5"]
    assert again[0].correct
    assert elapsed < 2 * 1.0 + 20, elapsed  # two time limits plus start-up of three workers
    _assert_all_gone(sorted(seen_pids))


def test_adversarial_sympy_input_hits_the_time_limit():
    items = [("\\boxed{10^{10^{10}}}", "1"), ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}")]
    start = time.monotonic()
    results = verify_batch(items, timeout_s=1.5, workers=1)
    assert time.monotonic() - start < 30
    assert (results[0].correct, results[0].reason) == (False, "timeout")
    assert (results[1].correct, results[1].reason) == (True, "symbolic")
    assert multiprocessing.active_children() == []


def test_a_crashing_worker_is_replaced():
    items = [("\\boxed{a}", "CRASH"), ("\\boxed{b}", "b")]
    results = verify_batch(items, timeout_s=10, compare=f"{THIS_MODULE}:sleepy_compare")
    assert [(result.correct, result.reason) for result in results] == [(False, "error"), (True, "exact")]


def test_memory_limit_turns_a_blow_up_into_a_result():
    items = [("\\boxed{a}", "HOG"), ("\\boxed{b}", "b")]
    results = verify_batch(items, timeout_s=10, compare=f"{THIS_MODULE}:sleepy_compare", memory_limit_mb=1024)
    assert [(result.correct, result.reason) for result in results] == [(False, "memory"), (True, "exact")]


def test_order_is_preserved_across_workers():
    naps = [0.05, 0.0, 0.03, 0.0, 0.01, 0.04, 0.0, 0.02] * 3
    items = [(f"\\boxed{{NAP{nap}}}", f"NAP{nap}") for nap in naps] + [("\\boxed{x}", "y")]
    results = verify_batch(items, timeout_s=10, workers=2, compare=f"{THIS_MODULE}:sleepy_compare")
    assert [result.extracted for result in results] == [f"NAP{nap}" for nap in naps] + ["x"]
    assert [result.reason for result in results] == ["napped"] * len(naps) + ["exact"]


def test_cheap_batches_start_no_worker():
    with VerifierPool(workers=2, timeout_s=5) as pool:
        results = pool.verify_batch(
            [("\\boxed{0.5}", "\\frac12"), ("The answer is (B)", "B"), ("\\boxed{7}", "8")]
        )
        assert pool.worker_pids() == []
    assert [result.correct for result in results] == [True, True, False]


def test_workers_that_cannot_start_raise_instead_of_hanging():
    with pytest.raises(RuntimeError, match="failed to start"):
        verify_batch([("\\boxed{1}", "1")], timeout_s=5, compare="no_such_module_here:compare")
    assert multiprocessing.active_children() == []


def test_bad_pool_settings_are_rejected():
    with pytest.raises(ValueError):
        VerifierPool(workers=0)
    with pytest.raises(ValueError):
        VerifierPool(timeout_s=0)
