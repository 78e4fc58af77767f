"""The demo's summary: what the run made, measured from its own outputs, as a table, JSON and PNGs.

Every number comes from a file the run wrote: the stage markers (``done/*.json``), the rollout
store and ``sophia-rollout stats``, the packed dataset's manifest, the trainer's metrics and
``sophia-convert verify``. Nothing is estimated or filled in.

* :func:`analyse_store` — pass rates by difficulty and whether the captions that state the true
  attribute earn higher caption rewards (read from the store's parquet shards, docs/ALGORITHM.md §2);
* :func:`compare_checkpoints` — which tensors the SOPHIA update changed (the language model) and
  which it left alone (the frozen vision tower and projector);
* :func:`write_summary` — ``summary.json``, ``summary.txt``, ``loss.png`` and ``lengths.png``.

The policy's own pass@1 on held-out questions, before and after the update, comes from the
``evaluate`` stage (``sophia_tools.demo.heldout``: ``sophia-eval``'s evaluation, scored by the verifier).
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sophia_tools.demo.signals import format_signals
from sophia_tools.demo.task import states_answer

if TYPE_CHECKING:
    from sophia_tools.demo import Demo

HOW_MADE = """\
How the demo data and models are made:
  * Images: 448x448 light-gray canvases with 1-3 circles of one colour (red / green / blue / yellow),
    drawn with PIL from a seed; each rollout image gets one question, alternating "What colour are the
    shapes?" (difficulty easy) and "How many circles?" (hard); the gold answers come from the drawing.
    The held-out evaluation uses yet other images.
  * Policy: the tiny InternVL fixture vLLM's CPU backend accepts (random InternViT-300M-like tower and
    projector, frozen; a 2-layer Qwen2 language model with head_dim 64), warmed up by SFT on Megatron
    (TP=2) to describe *other* images of the same kind with the rollout's caption prompt; 30% of those
    descriptions leave the count or the colour out ("some red shapes"), so sampled captions sometimes do
    too. At rollout it captions on real vLLM (CPU) unless --captioner-engine transformers says otherwise.
    A frozen random ViT separates colour and circle count, not position, so only those are asked.
  * Reasoner: the tiny Qwen2 fixture, fine-tuned (plain PyTorch) to answer a question from a
    description with a <think> trajectory and \\boxed{}: it answers what the description says (so a
    wrong caption leads it to a wrong answer); 40% of its trajectories take a detour (a wrong value,
    then a re-check that recovers half the time), so longer trajectories hold detours and errors; and
    when the description leaves the asked attribute out it writes a short guess, right by luck
    (a correct trajectory whose caption reward is low).
  * Rewards: the rule-based verifier scores what the reasoner actually wrote; caption rewards are the
    mean of their trajectories' scores (Eq. 5); selection is Keep-1 with alpha from configs/tiny.yaml.
  * Update: reward-weighted SFT of the policy on (original image, question) -> selected trajectory, mixed
    with a few arithmetic (text) and description (VQA) samples; the policy's pass@1 is then measured
    on held-out questions it answers itself, scored by the same verifier."""


def _read_table(directory: Path, columns: list[str]) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = sorted(directory.glob("part-*.parquet"))
    if not shards:
        return []
    return pa.concat_tables(pq.read_table(shard, columns=columns) for shard in shards).to_pylist()


def analyse_store(store: Path, inputs: Path, alpha: float) -> dict[str, Any]:
    """Pass rates by difficulty; caption accuracy vs caption reward; per-question pass rates."""
    rows = {row["id"]: row for row in map(json.loads, inputs.read_text(encoding="utf-8").splitlines())}
    scores = _read_table(store / "scores", ["id", "k", "n", "correct", "caption_reward"])
    captions = _read_table(store / "captions", ["id", "k", "text"])
    by_question: dict[str, list[bool]] = defaultdict(list)
    for score in scores:
        by_question[score["id"]].append(score["correct"])
    by_difficulty: dict[str, dict[str, Any]] = {}
    for item_id, outcomes in sorted(by_question.items()):
        entry = by_difficulty.setdefault(rows[item_id].get("difficulty") or "none",
                                         {"questions": 0, "trajectories": 0, "correct": 0})
        entry["questions"] += 1
        entry["trajectories"] += len(outcomes)
        entry["correct"] += sum(outcomes)
    for entry in by_difficulty.values():
        entry["pass_rate"] = round(entry["correct"] / max(entry["trajectories"], 1), 4)
    reward = {(s["id"], s["k"]): s["caption_reward"] for s in scores}
    truthful: dict[bool, list[float]] = {True: [], False: []}
    for caption in captions:
        if (caption["id"], caption["k"]) in reward:
            stated = states_answer(caption["text"], str(rows[caption["id"]]["answer"]))
            truthful[stated].append(reward[(caption["id"], caption["k"])])
    return {"by_difficulty": by_difficulty,
            "question_pass_rates": {key: round(sum(v) / len(v), 4) for key, v in sorted(by_question.items())},
            "captions_scored": len(reward), "captions_stating_answer": len(truthful[True]),
            "reward_mean_stating_answer": _mean(truthful[True]),
            "reward_mean_not_stating_answer": _mean(truthful[False]),
            "captions_at_or_above_alpha": sum(value + 1e-9 >= alpha for value in reward.values())}


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _tensors(directory: Path) -> dict[str, Any]:
    from safetensors.numpy import load_file

    tensors: dict[str, Any] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def compare_checkpoints(before: Path, after: Path) -> dict[str, Any]:
    """Changed / unchanged tensors between two HF checkpoints, split into trainable and frozen parts."""
    import numpy as np

    old, new = _tensors(before), _tensors(after)
    if set(old) != set(new):
        return {"error": f"tensor names differ: {sorted(set(old) ^ set(new))[:5]}"}
    parts: dict[str, dict[str, Any]] = {}
    for name in sorted(old):
        part = "language_model" if name.startswith("language_model.") else "frozen_vision_and_projector"
        entry = parts.setdefault(part, {"tensors": 0, "changed": 0, "max_abs_change": 0.0})
        change = float(np.abs(new[name].astype(np.float64) - old[name].astype(np.float64)).max())
        entry["tensors"] += 1
        entry["changed"] += change > 0
        entry["max_abs_change"] = max(entry["max_abs_change"], change)
    return parts


def plot_losses(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 3.6), squeeze=False)
    for axis, (title, values) in zip(axes[0], curves.items()):
        axis.plot(range(1, len(values) + 1), values, marker="o", markersize=3, color="#aa3377")
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def numbers(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The headline numbers of the run, each read from a stage's recorded output."""
    rollout = results["rollout"]["stats"]
    stats, analysis, reports = rollout["stats"], rollout["analysis"], rollout["reports"]
    counts, questions = stats["counts"], stats["question_pass_rate"]
    pack, train, verify = results["pack"]["stats"], results["train"]["stats"], results["verify"]["stats"]
    rates = list(analysis["question_pass_rates"].values())
    return {
        "images": results["task"]["stats"]["images"], "questions": counts["input_rows"],
        "captions": counts["captions"], "trajectories": counts["trajectories"], "scores": counts["scores"],
        "correct": counts["correct"],
        "trajectory_pass_rate": round(counts["correct"] / max(counts["scores"], 1), 4),
        "caption_reward_mean": stats["caption_rewards"]["mean"],
        "caption_reward_histogram": stats["caption_rewards"]["histogram"],
        "captions_at_or_above_alpha": stats["caption_rewards"]["at_or_above_alpha"],
        "question_pass_rate_mean": _mean(rates), "questions_any_correct": questions["questions_any_correct"],
        "pass_rate_by_difficulty": analysis["by_difficulty"],
        "captions_stating_answer": analysis["captions_stating_answer"],
        "reward_mean_stating_answer": analysis["reward_mean_stating_answer"],
        "reward_mean_not_stating_answer": analysis["reward_mean_not_stating_answer"],
        "signals": analysis.get("signals"), "captioner_engine": rollout.get("captioner_engine"),
        "selected": counts["selected"], "questions_decided": counts["decisions"],
        "alpha": stats["selection"]["alpha"],
        "rejects": stats["rejects"], "caption_seconds": reports.get("caption", {}).get("seconds"),
        "reason_seconds": reports.get("reason", {}).get("seconds"), "lengths": stats["lengths"],
        "packed_samples": pack["samples_packed"], "packs": pack["packs"], "packed_tokens": pack["tokens"],
        "packing_efficiency": pack["efficiency"], "pack_sources": {Path(s["path"]).name: s["packed"]
                                                                 for s in pack["sources"]},
        "loss": train["loss"], "loss_first": train["loss_first"], "loss_last": train["loss_last"],
        **epoch_means(train["loss"], pack["packs"], train["packs_per_step"]),
        "train_tokens_per_s": train["tokens_per_s"], "verify_max_abs_diff": verify["max_abs_diff"],
        "verify_tolerance": verify["tolerance"], "tensors": verify["tensors"],
        "policy_eval": results["evaluate"]["stats"],
    }


def epoch_means(losses: list[float], packs: int, packs_per_step: int) -> dict[str, Any]:
    """Mean loss over the first and the last epoch's worth of steps (one step's packs differ a lot)."""
    window = max(1, min(len(losses), round(packs / max(packs_per_step, 1))))
    return {"steps_per_epoch": window, "loss_mean_first_epoch": round(sum(losses[:window]) / window, 4),
            "loss_mean_last_epoch": round(sum(losses[-window:]) / window, 4)}


def throughput(name: str, stats: dict[str, Any], n: dict[str, Any]) -> str:
    """What a stage processed per second, where the run measured it."""
    if name in ("warmup_captioner", "train"):
        return f"{stats['tokens_per_s']:.0f} train tok/s ({stats['steps']} steps)"
    if name == "warmup_reasoner":
        return f"{stats['tokens_per_s']:.0f} train tok/s ({stats['steps']} steps)"
    if name == "rollout":
        caption_tokens = n["lengths"]["captions"].get("mean", 0) * n["captions"]
        reason_tokens = n["lengths"]["trajectories"].get("mean", 0) * n["trajectories"]
        return (f"captions {caption_tokens / max(n['caption_seconds'] or 1e-9, 1e-9):.0f} tok/s, "
                f"trajectories {reason_tokens / max(n['reason_seconds'] or 1e-9, 1e-9):.0f} tok/s "
                "(generated tokens / stage time, engine start included)")
    if name == "pack":
        return f"{stats['tokens']} tokens packed"
    return ""


def _rate(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.0%})" if whole else f"{part}/0"


def format_table(summary: dict[str, Any]) -> str:
    n, s = summary["numbers"], summary["settings"]
    lines = [f"SOPHIA demo: {summary['workdir']} ({summary['mode']} settings: K={s['K']}, N={s['N']})", "",
             f"{'stage':<18} {'status':<8} {'wall s':>8}  throughput"]
    for name, stage in summary["stages"].items():
        status = "reused" if stage["reused"] else "ran"
        lines.append(f"{name:<18} {status:<8} {stage['seconds']:>8.1f}  {stage['throughput']}")
    by_difficulty = ", ".join(f"{key} {value['correct']}/{value['trajectories']} ({value['pass_rate']:.0%})"
                              for key, value in n["pass_rate_by_difficulty"].items())
    rejects = "; ".join(f"{stage}: {reasons}" for stage, reasons in n["rejects"].items()) or "none"
    tensors = n["tensors"]
    lm, frozen = tensors.get("language_model", {}), tensors.get("frozen_vision_and_projector", {})
    stating, captions = n["captions_stating_answer"], n["captions"]
    lines += [
        "", f"rollout (the policy captions on {n['captioner_engine']}, the reasoner reasons on vLLM, "
            "the verifier scores)",
        f"  images / questions            {n['images']} / {n['questions']}",
        f"  captions (images x K)         {captions}",
        f"  trajectories (captions x N)   {n['trajectories']}",
        f"  pass rate, trajectories       {_rate(n['correct'], n['scores'])}",
        f"    by difficulty               {by_difficulty}",
        f"  pass rate per caption         mean caption reward {n['caption_reward_mean']}; "
        f">= alpha ({n['alpha']}): {_rate(n['captions_at_or_above_alpha'], captions)}",
        f"  caption reward histogram      {n['caption_reward_histogram']}",
        f"  pass rate per question        mean {n['question_pass_rate_mean']}; any correct: "
        f"{_rate(n['questions_any_correct'], n['questions'])}",
        f"  captions stating the answer   {_rate(stating, captions)}; their mean reward "
        f"{n['reward_mean_stating_answer']} vs {n['reward_mean_not_stating_answer']} for the others",
        *(format_signals(n["signals"]) if n.get("signals") else []),
        f"  selected (Keep-1)             {n['selected']} trajectories; "
        f"{n['questions_decided']} questions decided",
        f"  rejects by reason             {rejects}",
        "", f"packing   {n['packed_samples']} samples ({n['pack_sources']}) in {n['packs']} packs, "
            f"{n['packed_tokens']} tokens, efficiency {n['packing_efficiency']:.3f}",
        f"update    SOPHIA loss {n['loss_first']:.4f} -> {n['loss_last']:.4f} over {len(n['loss'])} steps "
        "(Megatron-Core, TP=2, 2 ranks)",
        f"          mean over the first epoch ({n['steps_per_epoch']} steps) "
        f"{n['loss_mean_first_epoch']:.4f} -> over the last {n['loss_mean_last_epoch']:.4f}",
        f"verify    the export in transformers vs in Megatron TP=2 (converted back from it): max_abs_diff "
        f"{n['verify_max_abs_diff']:.2e} (tolerance {n['verify_tolerance']:g})",
        "          "
        f"tensors changed: language model {lm.get('changed')}/{lm.get('tensors')}, "
        f"frozen vision + projector {frozen.get('changed')}/{frozen.get('tensors')}",
        _eval_line(n["policy_eval"]),
        "", "checks of a full-size run" + (" (not expected to pass at --fast sizes)" if summary["mode"] == "fast" else "")
        + ":", *(f"  [{'ok' if c['ok'] else 'FAILED'}] {c['check']}" for c in summary["checks"]),
        "", f"total wall time: {summary['wall_seconds']:.1f} s this run; "
            f"{summary['stages_seconds']:.1f} s for all stages when they ran",
        f"files: {', '.join(Path(path).name for path in summary['files'].values())} in {summary['workdir']} "
        "(logs/ holds every command's output)", "", HOW_MADE]
    return "\n".join(lines)


def _eval_line(evaluation: dict[str, Any]) -> str:
    before, after = evaluation["before"], evaluation["after"]
    types = ", ".join(f"{kind} {entry['correct']}/{entry['questions']}" for kind, entry in sorted(after["by_type"].items()))
    return (f"policy    answers {after['questions']} held-out questions itself (sophia-eval protocol, slow-thinking "
            "prompt): "
            f"pass@1 {_rate(before['correct'], before['questions'])} before the update -> "
            f"{_rate(after['correct'], after['questions'])} after (by question type: {types})"
            + "".join(f"; sophia-eval compare: {row['delta']:+.2f} points, 95 % interval [{row['low']:+.2f}, "
                      f"{row['high']:+.2f}]" for row in evaluation.get("compare", {}).values()
                      if row.get("delta") is not None))


def full_run_checks(n: dict[str, Any]) -> list[dict[str, Any]]:
    """What a full-size demo must show, or the loop is broken: the rollout selected trajectories,
    and the update lifted the policy's held-out pass@1 above its own before it."""
    before, after = n["policy_eval"]["before"]["correct"], n["policy_eval"]["after"]["correct"]
    return [{"check": f"the rollout selected trajectories ({n['selected']})", "ok": n["selected"] > 0},
            {"check": f"held-out pass@1 after the update ({after}) > before it ({before})", "ok": after > before}]


def write_summary(demo: Demo, wall_seconds: float) -> dict[str, Any]:
    """Write summary.json / summary.txt / loss.png / lengths.png into the workdir; returns the summary."""
    from dataclasses import asdict, replace

    from sophia_tools.demo import FAST, write_json

    results = demo.results
    n = numbers(results)
    files = {"json": str(demo.path("summary.json")), "text": str(demo.path("summary.txt")),
             "loss_png": str(demo.path("loss.png")), "lengths_png": str(demo.path("lengths.png"))}
    plot_losses({"captioner warm-up (SFT)": results["warmup_captioner"]["stats"]["loss"],
                 "SOPHIA update": n["loss"]}, Path(files["loss_png"]))
    shutil.copyfile(demo.path("rollout_stats", "lengths.png"), files["lengths_png"])
    summary = {
        "workdir": str(demo.workdir),
        "mode": "fast" if replace(demo.settings, captioner_engine=FAST.captioner_engine) == FAST else "full",
        "settings": asdict(demo.settings), "numbers": n, "wall_seconds": round(wall_seconds, 2),
        "stages_seconds": round(sum(result["seconds"] for result in results.values()), 2),
        "stages": {name: {"reused": result["reused"], "seconds": result["seconds"],
                          "throughput": throughput(name, result["stats"], n)}
                   for name, result in results.items()},
        "warmups": {"captioner": {key: value for key, value in results["warmup_captioner"]["stats"].items()
                                  if key != "loss"},
                    "reasoner": results["warmup_reasoner"]["stats"]},
        "files": files, "checks": full_run_checks(n),
    }
    summary["table"] = format_table(summary)
    write_json(Path(files["json"]), summary)
    Path(files["text"]).write_text(summary["table"] + "\n", encoding="utf-8")
    return summary
