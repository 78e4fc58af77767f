"""``sophia-rollout stats``: what a rollout store holds, as a JSON report and a PNG of length histograms.

What: ``rollout_stats(config)`` reads the store's tables (only the columns it needs) and the
inputs, and reports

* ``counts`` — rows per stage (inputs, captions, trajectories, scores, selected, decided questions),
  truncations (``finish_reason = length``) and correct trajectories;
* ``caption_rewards`` — the distribution of Eq. 5 over captions (count per value, mean, share ≥ α),
  i.e. how often a caption lets the reasoner answer;
* ``question_pass_rate`` — per question, the share of its trajectories that are correct (histogram
  in tenths), and ``share_of_questions_selected`` (questions with a selected trajectory / decided);
* ``verifier_reasons`` — why trajectories scored 0 or 1 (mismatch, truncated, no_answer, ...);
* ``rejects`` — rejected items per stage and reason, as they stand: a transient failure since
  retried successfully, and a reject of an input row that has changed since, are not counted;
* ``lengths`` — token-count summaries of captions, trajectories and selected trajectories;
* ``provenance`` — per table, what made its rows (models and weights fingerprints, prompts,
  sampling, K, N, selection settings; ``rollout.provenance``).

``write_stats(config, out_dir)`` writes ``stats.json`` and ``lengths.png`` (matplotlib, Agg
backend: no display needed) and returns the report.

Why: a rollout runs for days; these numbers say early whether captions help (caption rewards),
whether the reasoner is cut off (truncations), and how much data selection will keep.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rollout.stages import (
    CAPTION,
    CAPTIONS,
    DECISIONS,
    KEY_COLUMNS_OF,
    REASON,
    SCORES,
    SELECTED,
    TRAJECTORIES,
    read_rows,
)
from rollout.store import TRANSIENT_REASONS, Store
from sophia_common.atomic import atomic_path, write_text_atomic

if TYPE_CHECKING:
    from rollout.config import RolloutConfig

STATS_NAME = "stats.json"
PLOT_NAME = "lengths.png"


def length_summary(lengths: list[int]) -> dict[str, Any]:
    if not lengths:
        return {"count": 0}
    ordered = sorted(lengths)

    def quantile(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"count": len(ordered), "mean": round(sum(ordered) / len(ordered), 1), "p50": quantile(0.5),
            "p90": quantile(0.9), "max": ordered[-1]}


def _rejects(store: Store, input_hashes: dict[str, str]) -> dict[str, dict[str, int]]:
    """Rejects per stage and reason that still stand (see the module docstring)."""
    if not store.rejects.shard_paths():
        return {}
    rows = store.rejects.read(["stage", "reason", "id", "k", "n", "input_hash"]).to_pylist()
    stored = {CAPTION: {(row["id"], row["k"]) for row in read_rows(store, CAPTIONS, ["id", "k"])},
              REASON: {(row["id"], row["k"], row["n"]) for row in read_rows(store, TRAJECTORIES, ["id", "k", "n"])}}
    rows = [row for row in rows if row["id"] not in input_hashes or input_hashes[row["id"]] == row["input_hash"]]
    final = {(row["stage"], row["id"], row["k"], row["n"]) for row in rows if row["reason"] not in TRANSIENT_REASONS}
    grouped: dict[str, Counter] = defaultdict(Counter)
    for row in rows:  # rows of input rows that changed since are gone: they are examined again
        key = (row["id"], row["k"]) if row["stage"] == CAPTION else (row["id"], row["k"], row["n"])
        if row["reason"] in TRANSIENT_REASONS and (key in stored.get(row["stage"], ())
                                                   or (row["stage"], row["id"], row["k"], row["n"]) in final):
            continue  # retried since, and stored or rejected for good
        grouped[row["stage"]][row["reason"]] += 1
    return {stage: dict(counts.most_common()) for stage, counts in sorted(grouped.items())}


def _caption_reward_section(scores: list[dict], alpha: float) -> dict[str, Any]:
    rewards = {(row["id"], row["k"]): row["caption_reward"] for row in scores}
    values = list(rewards.values())
    histogram = Counter(round(value, 4) for value in values)
    return {"captions": len(values),
            "mean": round(sum(values) / len(values), 4) if values else None,
            "at_or_above_alpha": sum(value + 1e-9 >= alpha for value in values),
            "histogram": {f"{value:g}": histogram[value] for value in sorted(histogram)}}


def _question_section(scores: list[dict], decisions: list[dict]) -> dict[str, Any]:
    outcomes: dict[str, list[bool]] = defaultdict(list)
    for row in scores:
        outcomes[row["id"]].append(row["correct"])
    tenths = Counter(min(9, int(10 * sum(values) / len(values))) for values in outcomes.values())
    with_selection = sum(row["selected"] > 0 for row in decisions)
    return {"questions_scored": len(outcomes),
            "pass_rate_histogram": {f"[{bin_ / 10:.1f},{(bin_ + 1) / 10:.1f}{']' if bin_ == 9 else ')'}":
                                    tenths[bin_] for bin_ in range(10)},
            "questions_any_correct": sum(any(values) for values in outcomes.values()),
            "questions_decided": len(decisions), "questions_selected": with_selection,
            "share_of_questions_selected": round(with_selection / len(decisions), 4) if decisions else None}


def rollout_stats(config: RolloutConfig) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """The report (see the module docstring) and the raw lengths for plotting."""
    from rollout.inputs import read_inputs

    store = Store(config.store_path, writer="stats")
    inputs = read_inputs(config.inputs, check_images=False)
    captions = read_rows(store, CAPTIONS, ["id", "k", "num_tokens", "finish_reason"])
    trajectories = read_rows(store, TRAJECTORIES, ["id", "num_tokens", "finish_reason"])
    scores = read_rows(store, SCORES, ["id", "k", "correct", "reason", "caption_reward"])
    selected = read_rows(store, SELECTED, ["id", "num_tokens"])
    decisions = read_rows(store, DECISIONS, ["id", "selected"])
    lengths = {"captions": [row["num_tokens"] for row in captions],
               "trajectories": [row["num_tokens"] for row in trajectories],
               "selected": [row["num_tokens"] for row in selected]}
    report = {
        "store_dir": str(config.store_path),
        "counts": {"input_rows": len(inputs.rows), "input_rejects": len(inputs.rejects),
                   "captions": len(captions), "captions_truncated": _truncated(captions),
                   "trajectories": len(trajectories), "trajectories_truncated": _truncated(trajectories),
                   "scores": len(scores), "correct": sum(row["correct"] for row in scores),
                   "selected": len(selected), "decisions": len(decisions)},
        "caption_rewards": _caption_reward_section(scores, config.alpha),
        "question_pass_rate": _question_section(scores, decisions),
        "verifier_reasons": dict(Counter(row["reason"] for row in scores).most_common()),
        "rejects": _rejects(store, inputs.content_hashes()),
        "lengths": {name: length_summary(values) for name, values in lengths.items()},
        "selection": {"alpha": config.alpha, "keep_k": config.keep_k, "ablation": config.ablation},
        "provenance": {name: store.table(name, KEY_COLUMNS_OF[name]).provenance
                       for name in (CAPTIONS, TRAJECTORIES, SCORES, SELECTED, DECISIONS)},
    }
    return report, lengths


def _truncated(rows: list[dict]) -> int:
    return sum(row["finish_reason"] == "length" for row in rows)


def plot_lengths(lengths: dict[str, list[int]], path: Path) -> None:
    """Histograms of caption, trajectory and selected-trajectory token counts, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(lengths), figsize=(5 * len(lengths), 3.6), squeeze=False)
    for axis, (name, values) in zip(axes[0], lengths.items()):
        if values:
            axis.hist(values, bins=min(50, max(5, len(set(values)))), color="#4477aa")
        else:
            axis.text(0.5, 0.5, "none", ha="center", va="center", transform=axis.transAxes)
        axis.set_title(f"{name} ({len(values)})")
        axis.set_xlabel("tokens")
        axis.set_ylabel("count")
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=100, format="png")
    plt.close(figure)


def write_stats(config: RolloutConfig, out_dir: Path) -> dict[str, Any]:
    """Write ``stats.json`` and ``lengths.png`` into ``out_dir``; return the report."""
    report, lengths = rollout_stats(config)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["files"] = {"json": str(out_dir / STATS_NAME), "png": str(out_dir / PLOT_NAME)}
    plot_lengths(lengths, out_dir / PLOT_NAME)
    write_text_atomic(out_dir / STATS_NAME, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return report

