"""The numbers of an evaluation: pass@1 with its standard error, pass@K, lengths, and paired deltas.

With K samples per question and c of them correct:

* pass@1 = mean over questions of c/K (the paper's metric for K = 1; with K > 1 its estimate
  averaged over samples), standard error = sample std of c/K over questions / sqrt(n);
* pass@K = the share of questions with at least one correct sample (c > 0);
* mean response length (tokens) and truncation rate (share of responses cut at max_tokens).

Only questions whose K samples all have a verdict count; the others are reported as ``missing``
(a run still in progress, or server failures to retry). ``paired_bootstrap`` compares two runs on
the questions they share: the mean difference of per-question pass rates and a percentile
interval from resampling questions (the pairs stay together, so per-question difficulty cancels).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any


def per_question(records: Iterable[Mapping[str, Any]], samples: int) -> dict[str, dict[str, Any]]:
    """``{id: {correct, samples, category, tokens, truncated}}`` of questions with all ``samples`` verdicts."""
    grouped: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        if record.get("correct") is not None:
            grouped[record["id"]].append(record)
    out = {}
    for item_id, rows in grouped.items():
        if len(rows) < samples:
            continue
        rows = sorted(rows, key=lambda row: row["sample"])[:samples]
        out[item_id] = {"correct": sum(bool(row["correct"]) for row in rows), "samples": samples,
                        "category": rows[0].get("category") or "all",
                        "tokens": [int(row.get("tokens") or 0) for row in rows],
                        "truncated": sum(row.get("finish_reason") == "length" for row in rows)}
    return out


def summarize(questions: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """pass@1 ± s.e., pass@K, mean tokens and truncation rate of ``per_question`` entries (in percent)."""
    rates = [q["correct"] / q["samples"] for q in questions.values()]
    n = len(rates)
    tokens = [t for q in questions.values() for t in q["tokens"]]
    responses = sum(q["samples"] for q in questions.values())
    mean = sum(rates) / n if n else float("nan")
    se = math.sqrt(sum((r - mean) ** 2 for r in rates) / (n - 1) / n) if n > 1 else 0.0
    return {"n": n,
            "pass@1": round(100 * mean, 2) if n else None,
            "pass@1_se": round(100 * se, 2) if n else None,
            "pass@k": round(100 * sum(q["correct"] > 0 for q in questions.values()) / n, 2) if n else None,
            "mean_tokens": round(sum(tokens) / len(tokens), 1) if tokens else None,
            "truncation_rate": round(100 * sum(q["truncated"] for q in questions.values()) / responses, 2)
            if responses else None}


def by_category(questions: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, dict[str, Mapping[str, Any]]] = defaultdict(dict)
    for item_id, question in questions.items():
        groups[str(question["category"])][item_id] = question
    return {category: summarize(groups[category]) for category in sorted(groups)}


def paired_bootstrap(a: Mapping[str, float], b: Mapping[str, float], resamples: int = 10000,
                     seed: int = 0) -> dict[str, Any]:
    """Mean of b - a over shared questions, with a 95 % percentile interval (in points, x100)."""
    import numpy as np

    shared = sorted(set(a) & set(b))
    if not shared:
        return {"n": 0, "delta": None, "low": None, "high": None}
    diffs = np.array([b[key] - a[key] for key in shared], dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 1000):  # bounded memory for big benchmarks
        stop = min(start + 1000, resamples)
        draws = rng.integers(0, len(diffs), size=(stop - start, len(diffs)))
        means[start:stop] = diffs[draws].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"n": len(shared), "delta": round(100 * float(diffs.mean()), 2), "low": round(100 * float(low), 2),
            "high": round(100 * float(high), 2)}
