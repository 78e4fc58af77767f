"""Verifier accuracy and throughput: labelled cases against Math-Verify, or synthetic answers.

    sophia-profile verifier --cases FILE.jsonl [--against math-verify] [--workers 1] [--timeout 5]
    sophia-profile verifier [--n 400] [--n-adversarial 24] [--workers 1] [--timeout 1.0]

With ``--cases`` (JSON lines ``{"response", "answer" (or "gold"), "expected"[, "choices"]}``) it
prints, for this project's verifier and — with ``--against math-verify`` — for Math-Verify alone in
the same run (README usage, ``verify(parse(gold), parse(response))``, in the same killable worker
pool with the same time limit): accuracy, false positives, false negatives, verdicts per second,
time-outs and the reasons given; then hang bait (``10^{10^{10^{10}}}``, ``5^{5^{5^{5^5}}}``,
60-deep fractions, ``100000!``) with the number of batches that did not come back ("hangs").

Typical answers are trajectories of a few KB ending in ``\\boxed{…}`` with the answer kinds seen in
MathVision / OlympiadBench (integers, decimals, fractions, letters, intervals, surds, polynomials),
all distinct, so the pool's de-duplication of repeated answers does not flatter the numbers.
They are measured twice: with the parent's fast path (exact / numeric / letter checks decided
without SymPy) and with every check sent to a worker, which shows what the fast path buys.
Adversarial answers are built to make SymPy slow or to blow up (huge powers, deep nesting, long
sums, big factorials, wide sets): they show that the pool keeps its time limit. "Per core" divides
by the worker count (the parent mostly waits on the workers). Worker start-up is excluded: the pool
is warmed before the clock starts, as a long-lived score stage would be.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from rollout.verifier.pool import VerifierPool
from sophia_common.cli import UserError

MATH_VERIFY_CHECK = "rollout.verifier.mathverify:mathverify_compare"
HANG_BAIT = ["10^{10^{10^{10}}}", "5^{5^{5^{5^5}}}", "\\frac{1}{" * 60 + "2" + "}" * 60, "100000!"]

_REASONING = "Let us look at the figure carefully. " * 40 + "\n\n"

TYPICAL_ANSWERS = [  # (prediction, gold) makers, varied by k so that no two checks in a batch are the same
    lambda k: (f"{k}", f"{k}"),
    lambda k: (f"{k}.75", f"\\frac{{{4 * k + 3}}}{{4}}"),
    lambda k: (f"\\frac{{\\sqrt{{{k + 2}}}}}{{2}}", f"\\sqrt{{{k + 2}}}/2"),
    lambda k: (f"({'ABCD'[k % 4]}) {k}", "ABCD"[(k // 4) % 4]),
    lambda k: (f"{k}\\sqrt{{2}}", f"\\sqrt{{{2 * k * k}}}"),
    lambda k: (f"[{k}, {k + 2})", f"[{k},{k + 2})"),
    lambda k: (f"x^2 - {k * k}", f"(x-{k})(x+{k})"),
    lambda k: (f"{k}^\\circ", f"{k}"),
    lambda k: (f"\\{{{k}, {k + 1}\\}}", f"\\{{{k + 1}, {k}\\}}"),
    lambda k: (f"{k},000", f"{k}000"),
    lambda k: (f"\\frac{{1}}{{{k + 1}}}", repr(1 / (k + 1))),
    lambda k: (f"{k}", f"{k + 1}"),
    lambda k: (f"{k}\\pi r^2", f"{k}r^{{2}}\\pi"),
    lambda k: (f"{k} \\pm \\sqrt{{3}}", f"{k}+\\sqrt3, {k}-\\sqrt3"),
    lambda k: (f"y = {k}x + 1", f"{k}x+1"),
    lambda k: (f"{k}\\%", f"{k / 100}"),
]


def typical_items(n: int) -> list[tuple[str, str]]:
    makers = TYPICAL_ANSWERS
    pairs = [makers[index % len(makers)](index // len(makers) + 2) for index in range(n)]
    return [
        (f"<think>{_REASONING}</think>So the answer is $\\boxed{{{pred}}}$.", gold) for pred, gold in pairs
    ]


def adversarial_items() -> list[tuple[str, str]]:
    nested_fraction = "\\frac{1}{" * 60 + "2" + "}" * 60
    nested_sqrt = "\\sqrt{" * 40 + "2" + "}" * 40
    long_sum = "+".join(f"x^{{{index}}}" for index in range(120))
    return [
        ("10^{10^{10}}", "1"),
        ("2^{2^{2^{2^{2^{2}}}}}", "3"),
        ("(x+1)^{400}", "(x+1)^{401}"),
        (nested_fraction, "\\frac{1}{3}"),
        (nested_sqrt, "1"),
        (long_sum, "x^{120}"),
        ("100000!", "99999!"),
        ("x^{x^{x^{x^{x}}}}", "x^{x^{x^{x}}}"),
        ("\\sin(10^{100})", "0.5"),
        ("\\{" + ",".join(f"\\sqrt{{{index}}}" for index in range(2, 40)) + "\\}", "\\{\\sqrt{2}\\}"),
        ("(" * 150 + "1" + ")" * 150, "1"),
        ("+".join(f"\\frac{{x}}{{x+{index}}}" for index in range(25)), "1"),
    ]


def adversarial_responses(n: int) -> list[tuple[str, str]]:
    """``n`` adversarial responses, cycling through ``adversarial_items`` with a varied gold (no repeats)."""
    items = adversarial_items()
    pairs = [items[index % len(items)] + (index // len(items),) for index in range(n)]
    return [(f"The answer is $\\boxed{{{pred}}}$.", f"{gold}+{k}") for pred, gold, k in pairs]


def _measure(items: list, workers: int, timeout_s: float, fast_path: bool) -> dict:
    with VerifierPool(workers=workers, timeout_s=timeout_s, fast_path=fast_path) as pool:
        pool.verify_batch([("\\boxed{x+1}", "1+x")] * workers)  # start and warm the workers
        before = dict(pool.stats)
        start = time.perf_counter()
        results = pool.verify_batch(items)
        seconds = time.perf_counter() - start
        stats = {key: pool.stats[key] - before[key] for key in pool.stats}
    per_second = len(items) / seconds
    return {
        "verifications": len(items),
        "seconds": round(seconds, 3),
        "per_second": round(per_second, 1),
        "per_second_per_core": round(per_second / workers, 1),
        "in_worker": stats["in_worker"],
        "timeouts": stats["timeouts"],
        "correct": sum(result.correct for result in results),
        "reasons": dict(Counter(result.reason for result in results)),
    }


def load_cases(path: Path) -> list[dict]:
    """Labelled cases; ``UserError`` naming the file and line on a bad one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    cases = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        gold = row.get("answer", row.get("gold")) if isinstance(row, dict) else None
        if gold is None or not isinstance(row.get("expected"), bool) or "response" not in row:
            raise UserError(f"{path}:{number}: need 'response', 'answer' (or 'gold') and a boolean 'expected'")
        cases.append({"response": row["response"], "answer": str(gold), "choices": row.get("choices"),
                      "expected": row["expected"]})  # fmt: skip
    if not cases:
        raise UserError(f"{path}: no cases")
    return cases


def _score(cases: list[dict], workers: int, timeout_s: float, **pool_options) -> dict:
    with VerifierPool(workers=workers, timeout_s=timeout_s, **pool_options) as pool:
        pool.verify_batch([{"response": "\\boxed{x+1}", "answer": "1+y"}] * workers)  # start and warm
        before = dict(pool.stats)
        start = time.perf_counter()
        results = pool.verify_batch(cases)
        seconds = time.perf_counter() - start
        timeouts = pool.stats["timeouts"] - before["timeouts"]
    got = [result.correct for result in results]
    expected = [case["expected"] for case in cases]
    false_positives = sum(g and not e for g, e in zip(got, expected))
    false_negatives = sum(e and not g for g, e in zip(got, expected))
    return {
        "accuracy": round(1 - (false_positives + false_negatives) / len(cases), 4),
        "false_positives": false_positives,
        "false_negatives": false_negatives,
        "seconds": round(seconds, 2),
        "verdicts_per_s": round(len(cases) / seconds, 1),
        "timeouts": timeouts,
        "reasons": dict(Counter(result.reason for result in results).most_common()),
    }


def hang_bait(workers: int, timeout_s: float) -> dict:
    """Hang bait through the pool: every item must come back (as a time-out or a verdict)."""
    items = [(f"\\boxed{{{bait}}}", str(k + 2)) for k, bait in enumerate(HANG_BAIT)]
    limit = len(items) * (timeout_s + 5) + 60
    start = time.perf_counter()
    with VerifierPool(workers=workers, timeout_s=timeout_s) as pool:
        results = pool.verify_batch(items)
    seconds = time.perf_counter() - start
    return {
        "items": len(items),
        "seconds": round(seconds, 2),
        "hangs": int(seconds > limit) + sum(result is None for result in results),
        "rewarded": sum(bool(result and result.correct) for result in results),
        "reasons": dict(Counter(result.reason for result in results)),
    }


def run_cases_bench(path: Path, against: str | None, workers: int, timeout_s: float) -> dict:
    """Accuracy, errors and speed on labelled cases, for this verifier and optionally Math-Verify."""
    cases = load_cases(path)
    report = {"cases": str(path), "n": len(cases), "positives": sum(case["expected"] for case in cases),
              "workers": workers, "timeout_s": timeout_s}  # fmt: skip
    report["ours"] = _score(cases, workers, timeout_s)
    if against == "math-verify":
        report["math_verify"] = _score(cases, workers, timeout_s, compare=MATH_VERIFY_CHECK, raw=True)
        report["speed_ratio"] = round(report["ours"]["verdicts_per_s"] / report["math_verify"]["verdicts_per_s"], 2)
    report["hang_bait"] = hang_bait(workers, min(timeout_s, 2.0))
    return report


def run_verifier_bench(
    n: int = 400, workers: int = 1, timeout_s: float = 1.0, n_adversarial: int = 24
) -> dict:
    """Throughput of typical (with and without the fast path) and adversarial verifications."""
    typical_batch, adversarial_batch = typical_items(n), adversarial_responses(n_adversarial)
    return {
        "workers": workers,
        "timeout_s": timeout_s,
        "typical": _measure(typical_batch, workers, timeout_s, fast_path=True),
        "typical_all_in_workers": _measure(typical_batch, workers, timeout_s, fast_path=False),
        "adversarial": _measure(adversarial_batch, workers, timeout_s, fast_path=True),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="sophia-profile verifier", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--cases", type=Path, help="labelled JSONL cases: accuracy, FP, FN and speed")
    parser.add_argument("--against", choices=["math-verify"], help="also score Math-Verify alone, same run")
    parser.add_argument("--n", type=int, default=400, help="typical verifications (without --cases)")
    parser.add_argument("--n-adversarial", type=int, default=24, help="adversarial verifications (without --cases)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, help="seconds per check (default 5 with --cases, else 1)")
    args = parser.parse_args(argv)
    if args.workers < 1 or (args.timeout is not None and args.timeout <= 0):
        raise UserError(f"--workers must be >= 1 and --timeout > 0, got {args.workers} and {args.timeout}")
    if args.cases is not None:
        report = run_cases_bench(args.cases, args.against, args.workers, args.timeout or 5.0)
    elif args.against:
        raise UserError("--against needs --cases FILE.jsonl")
    else:
        report = run_verifier_bench(args.n, args.workers, args.timeout or 1.0, args.n_adversarial)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
