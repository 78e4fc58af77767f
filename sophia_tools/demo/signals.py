"""Does each ingredient of SOPHIA's selection carry signal in a rollout store? Measured, not assumed.

The synthetic task (:mod:`sophia_tools.demo.task`) is built so that the caption reward and the
shortest-correct rule *can* matter; this module checks that they do in what the models actually
wrote, reading the store's ``captions``, ``trajectories`` and ``scores`` tables:

* **caption reward vs caption correctness** — each caption is ``right`` (states the gold value of
  the asked attribute), ``vague`` (leaves it out) or ``wrong`` (states another value); per class:
  how many, their mean caption reward, and the share at or above α; and the classes per question
  type (``category``), which shows which attribute the policy reads;
* **length vs errors** — each trajectory is a ``guess`` ("I guess"), a ``detour`` (re-checks after
  a wrong intermediate value) or ``clean``; per class: count, mean tokens, pass rate; and the pass
  rate and detour share by length tercile of the trajectories from ``right`` captions;
* **what a selection rule picks** — :func:`composition` of any set of trajectories (an arm's
  selected table): shares of clean / detour / guess and of wrong answers.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

from sophia_tools.demo.task import caption_class

GUESS = re.compile(r"\bI guess\b|\bcannot (count|tell)\b")
DETOUR = re.compile(r"\b(count|look) again\b")
CAPTION_CLASSES = ("right", "vague", "wrong")
TRAJECTORY_CLASSES = ("clean", "detour", "guess")


def trajectory_class(text: str) -> str:
    """``guess``, ``detour`` or ``clean``: the shape of a reasoner's (or policy's) trajectory."""
    return "guess" if GUESS.search(text) else "detour" if DETOUR.search(text) else "clean"


def read_table(directory: Path, columns: list[str]) -> list[dict[str, Any]]:
    """Some columns of a store table (its ``part-*.parquet`` shards); [] when it has none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = sorted(Path(directory).glob("part-*.parquet"))
    if not shards:
        return []
    return pa.concat_tables(pq.read_table(shard, columns=columns) for shard in shards).to_pylist()


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def classified_captions(store: Path, answers: dict[str, str]) -> list[tuple[tuple[str, int], str]]:
    """((id, k), class) of every caption of the store whose question is in ``answers``."""
    return [((caption["id"], caption["k"]), caption_class(caption["text"], answers[caption["id"]]))
            for caption in read_table(store / "captions", ["id", "k", "text"]) if caption["id"] in answers]


def caption_signal(captions: list[tuple[tuple[str, int], str]], store: Path, alpha: float) -> dict[str, Any]:
    """Per caption class: count, mean caption reward, share of captions at or above α."""
    reward = {(s["id"], s["k"]): s["caption_reward"]
              for s in read_table(store / "scores", ["id", "k", "caption_reward"])}
    by_class: dict[str, list[float]] = {name: [] for name in CAPTION_CLASSES}
    for key, name in captions:
        if key in reward:
            by_class[name].append(reward[key])
    return {name: {"captions": len(values), "reward_mean": _mean(values),
                   "at_or_above_alpha": _mean([float(v + 1e-9 >= alpha) for v in values])}
            for name, values in by_class.items()}


def captions_by_type(captions: list[tuple[tuple[str, int], str]], kinds: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per question type (the input's ``category``): how many captions are right, vague and wrong."""
    counts = Counter((kinds[key[0]], name) for key, name in captions)
    return {kind: {name: counts[(kind, name)] for name in CAPTION_CLASSES}
            for kind in sorted({kind for kind, _ in counts})}


def _joined(store: Path, answers: dict[str, str]) -> list[dict[str, Any]]:
    """One dict per scored trajectory: correct, num_tokens, caption_reward, class, its caption's class."""
    texts = {(t["id"], t["k"], t["n"]): t["text"] for t in read_table(store / "trajectories", ["id", "k", "n", "text"])}
    captions = {(c["id"], c["k"]): c["text"] for c in read_table(store / "captions", ["id", "k", "text"])}
    out = []
    for score in read_table(store / "scores", ["id", "k", "n", "correct", "caption_reward", "num_tokens"]):
        key = (score["id"], score["k"], score["n"])
        if score["id"] not in answers or key not in texts:
            continue
        out.append({**score, "class": trajectory_class(texts[key]),
                    "caption": caption_class(captions.get(key[:2], ""), answers[score["id"]])})
    return out


def length_signal(store: Path, answers: dict[str, str]) -> dict[str, Any]:
    """Per trajectory class: count, mean tokens, pass rate; by length tercile (right captions only)."""
    rows = _joined(store, answers)
    classes = {}
    for name in TRAJECTORY_CLASSES:
        members = [row for row in rows if row["class"] == name]
        classes[name] = {"trajectories": len(members), "mean_tokens": _mean([r["num_tokens"] for r in members]),
                         "pass_rate": _mean([float(r["correct"]) for r in members])}
    informed = sorted((row for row in rows if row["caption"] == "right"), key=lambda row: row["num_tokens"])
    terciles = []
    for part in range(3):
        chunk = informed[part * len(informed) // 3:(part + 1) * len(informed) // 3]
        if chunk:
            terciles.append({"tokens": [chunk[0]["num_tokens"], chunk[-1]["num_tokens"]],
                             "trajectories": len(chunk), "pass_rate": _mean([float(r["correct"]) for r in chunk]),
                             "detour_share": _mean([float(r["class"] == "detour") for r in chunk])})
    return {"by_class": classes, "right_caption_terciles": terciles}


def composition(trajectories: list[dict[str, Any]]) -> dict[str, Any]:
    """Shares of clean / detour / guess trajectories and of wrong answers among ``trajectories``
    (dicts with ``text`` or ``response``, and ``correct`` when known), plus their mean tokens."""
    classes = Counter(trajectory_class(t.get("text") or t.get("response") or "") for t in trajectories)
    total = max(len(trajectories), 1)
    known = [t["correct"] for t in trajectories if t.get("correct") is not None]
    return {"samples": len(trajectories), **{name: round(classes[name] / total, 4) for name in TRAJECTORY_CLASSES},
            "wrong": round(1 - sum(known) / len(known), 4) if known else None,
            "mean_tokens": _mean([t["num_tokens"] for t in trajectories if t.get("num_tokens") is not None])}


def rollout_signals(store: Path, inputs: Path, alpha: float) -> dict[str, Any]:
    """Caption-reward and length signals of a store, for the questions of ``inputs`` (JSONL)."""
    rows = [json.loads(line) for line in Path(inputs).read_text(encoding="utf-8").splitlines()]
    answers = {row["id"]: str(row["answer"]) for row in rows}
    captions = classified_captions(store, answers)
    kinds = {row["id"]: row.get("category", "all") for row in rows}
    return {"alpha": alpha, "caption_reward_by_caption": caption_signal(captions, store, alpha),
            "captions_by_type": captions_by_type(captions, kinds), "length_vs_errors": length_signal(store, answers)}


def format_signals(signals: dict[str, Any]) -> list[str]:
    """Text lines of :func:`rollout_signals` for a summary."""
    lines = [f"  caption reward by what the caption says (alpha {signals['alpha']}):"]
    for name, entry in signals["caption_reward_by_caption"].items():
        lines.append(f"    {name:<6} {entry['captions']:>5} captions, mean reward {entry['reward_mean']}, "
                     f">= alpha {entry['at_or_above_alpha']}")
    for kind, classes in signals.get("captions_by_type", {}).items():
        lines.append(f"    {kind} questions: " + ", ".join(f"{name} {count}" for name, count in classes.items()))
    lines.append("  trajectories by shape:")
    for name, entry in signals["length_vs_errors"]["by_class"].items():
        lines.append(f"    {name:<6} {entry['trajectories']:>5}, mean {entry['mean_tokens']} tokens, "
                     f"pass rate {entry['pass_rate']}")
    lines.append("  right-caption trajectories by length tercile (tokens: pass rate, detour share):")
    for entry in signals["length_vs_errors"]["right_caption_terciles"]:
        lines.append(f"    {entry['tokens'][0]}-{entry['tokens'][1]}: {entry['pass_rate']}, {entry['detour_share']}")
    return lines

