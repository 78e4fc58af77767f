"""The ablations' report: pass@1 per arm (mean ± std over seeds, per question type), the paper's
orderings checked one by one, what each arm trained on, and the rollout's signals.

Every number is read from the stages' recorded results (``done/*.json``, written from the
evaluation's records (``sophia-eval``'s, scored by the verifier)); nothing is estimated. An ordering
"holds" when the mean of the better arm is higher; the report also gives the difference in units
of its standard error over seeds, so a reader sees whether it stands out of the seeds' noise.
Each arm is also compared, per question type, with the best blind answer: chance (a random value of
the type: 1 of 4 colours, 1 of 3 counts) or always the type's most common gold answer, whichever is
higher. An arm at that level has learnt the answer's format or prior, not to read the image, and
orderings between such arms say nothing about the selection rules.
Writes ``ablations.json``, ``ablations.txt`` and ``ablations.png`` into the workdir.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sophia_tools.ablations import ARMS, PAPER_ORDER, AblationSettings, arm_named
from sophia_tools.demo.signals import format_signals
from sophia_tools.demo.task import COLOURS, COUNT_WORDS

if TYPE_CHECKING:
    from sophia_tools.demo import Demo

TYPES = ("all", "colour", "count")
PAPER_TABLE5 = {"random": 51.53, "no_caption_reward": 53.54, "no_shortest": 54.74, "sophia": 55.13}
PAPER_TABLE_A5 = {"sophia": 50.74, "keep2": 50.63}
CHANCE = {"colour": 1 / len(COLOURS), "count": 1 / len(COUNT_WORDS)}  # a random value of the type


def rate(evaluation: dict[str, Any], kind: str) -> float:
    """pass@1 of one evaluation, over all questions or one question type."""
    if kind == "all":
        return evaluation["correct"] / evaluation["questions"]
    entry = evaluation["by_type"].get(kind, {"correct": 0, "questions": 0})
    return entry["correct"] / entry["questions"] if entry["questions"] else float("nan")


def _per_type_level(evaluation: dict[str, Any], levels: dict[str, float]) -> dict[str, float]:
    """A pass@1 level per question type, and over all questions of ``evaluation`` weighted by type."""
    counts = {kind: evaluation["by_type"].get(kind, {}).get("questions", 0) for kind in levels}
    total = sum(counts.values())
    overall = sum(levels[kind] * counts[kind] for kind in levels) / total if total else float("nan")
    return {"all": round(overall, 4), **{kind: round(value, 4) for kind, value in levels.items()}}


def chance_level(evaluation: dict[str, Any]) -> dict[str, float]:
    """pass@1 of answering a random value of each question's type, on the questions of ``evaluation``."""
    return _per_type_level(evaluation, CHANCE)


def majority_level(records: list[dict[str, Any]]) -> dict[str, float]:
    """pass@1 of always giving each type's most common gold answer on these questions (the held-out
    answers need not be uniform: a policy that learnt their prior beats chance without seeing)."""
    answers: dict[str, Counter] = {}
    for record in records:
        gold = record["answer"][0] if isinstance(record["answer"], list) else record["answer"]
        answers.setdefault(record["category"], Counter())[str(gold).strip().lower()] += 1
    total = sum(sum(counter.values()) for counter in answers.values())
    levels = {kind: round(max(counter.values()) / sum(counter.values()), 4) for kind, counter in answers.items()}
    overall = sum(max(counter.values()) for counter in answers.values()) / total if total else float("nan")
    return {"all": round(overall, 4), **levels}


def blind_level(evaluation: dict[str, Any], chance: dict[str, float], majority: dict[str, float]) -> dict[str, float]:
    """Per type the higher of chance and the majority answer; over all questions weighted by type."""
    return _per_type_level(evaluation, {kind: max(chance[kind], majority.get(kind, 0.0)) for kind in CHANCE})


def above_chance(arms: dict[str, dict[str, Any]], blind: dict[str, float]) -> list[dict[str, Any]]:
    """Each trained arm's pass@1, overall and per type, against the blind level (difference in standard
    errors over seeds)."""
    return [{"arm": name, "kind": kind, "claim": f"{arm['label']} ({kind}) > blind",
             **compare(mean_std([blind[kind]]), arm["pass@1"][kind])}
            for name, arm in arms.items() if arm["pass@1"] for kind in TYPES if kind in blind]


def eval_records(directory: Path, *, required: bool = False) -> list[dict[str, Any]]:
    """The per-question records ``sophia-eval`` wrote under ``directory``; [] when it has none, unless
    ``required`` (then reading the missing file raises, naming it)."""
    from sophia_tools.demo.heldout import BENCHMARK

    path = Path(directory) / BENCHMARK / "records.jsonl"
    if not required and not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def answer_forms(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What held-out answers look like: no answer, an answer of the wrong type (a count to a colour
    question, ...), and pass@1 among answers of the right type, per type, next to its chance."""
    typed = {"colour": set(COLOURS), "count": {str(n) for n in COUNT_WORDS} | set(COUNT_WORDS.values())}
    unanswered = wrong_type = 0
    well_typed = {kind: [0, 0] for kind in CHANCE}  # [right, answers]
    for record in records:
        answer = str(record.get("extracted") or "").strip().lower()
        if not answer:
            unanswered += 1
        elif answer not in typed[record["category"]]:
            wrong_type += 1
        else:
            well_typed[record["category"]][0] += bool(record["correct"])
            well_typed[record["category"]][1] += 1
    total = max(len(records), 1)
    return {"answers": len(records), "unanswered": round(unanswered / total, 4),
            "wrong_type": round(wrong_type / total, 4),
            "right_of_well_typed": {kind: round(right / count, 4) if count else None
                                    for kind, (right, count) in well_typed.items()}}


def arm_answer_forms(demo: Demo, name: str, seeds: list[int]) -> dict[str, Any]:
    """``answer_forms`` over the evaluation records of every seed of an arm (kept in its directory)."""
    return answer_forms([record for seed in seeds for record in eval_records(demo.path("arms", name, f"seed{seed}", "eval"))])


def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of per-seed values."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": round(mean, 4), "std": round(std, 4), "seeds": len(values), "values": [round(v, 4) for v in values]}


def aggregate(evaluations: list[dict[str, Any]]) -> dict[str, Any]:
    return {kind: mean_std([rate(evaluation, kind) for evaluation in evaluations]) for kind in TYPES}


def compare(worse: dict[str, Any], better: dict[str, Any]) -> dict[str, Any]:
    """Does ``better`` beat ``worse`` (overall pass@1)? The difference and its standard error over seeds."""
    difference = better["mean"] - worse["mean"]
    error = math.sqrt(better["std"] ** 2 / better["seeds"] + worse["std"] ** 2 / worse["seeds"])
    return {"holds": difference > 0, "difference": round(difference, 4), "standard_error": round(error, 4),
            "z": round(difference / error, 2) if error > 0 else None}


def orderings(arms: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The paper's adjacent orderings (Random < w/o CR < w/o S < SOPHIA) and Keep-2 vs Keep-1."""
    pairs = list(zip(PAPER_ORDER, PAPER_ORDER[1:], strict=False)) + [("keep2", "sophia")]
    out = []
    for worse, better in pairs:
        if worse in arms and better in arms:
            verdict = compare(arms[worse]["pass@1"]["all"], arms[better]["pass@1"]["all"])
            out.append({"worse": worse, "better": better, **verdict,
                        "claim": f"{arm_named(worse).label} < {arm_named(better).label}"})
    return out


def _verdict(entry: dict[str, Any]) -> str:
    if not entry["holds"]:
        return "does NOT hold"
    if entry["z"] is None or entry["z"] >= 2:
        return "holds"
    return "holds, within the seeds' noise (< 2 standard errors)"


def _verdict_line(entry: dict[str, Any]) -> str:
    z = f", {entry['z']} standard errors" if entry["z"] is not None else ""
    return f"  {entry['claim']:<45} {_verdict(entry)} (difference {entry['difference']:+.3f}{z})"


def checks(arms: dict[str, dict[str, Any]], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """What a full run must show, or the pipeline is broken: every arm selected and trained on
    something, and the SOPHIA update lifts the policy above its own pass@1 before the update."""
    out = [{"check": f"arm {name} selected trajectories in every seed", "ok": all(arm["selected"])}
           for name, arm in arms.items()]
    out += [{"check": f"arm {name} trained on every trajectory it selected (none over the pack length)",
             "ok": arm["packed"] == [count for count in arm["selected"] if count]} for name, arm in arms.items()]
    if "sophia" in arms and arms["sophia"]["pass@1"]:
        after, before = arms["sophia"]["pass@1"]["all"]["mean"], baseline["all"]["mean"]
        out.append({"check": f"SOPHIA pass@1 after the update ({after}) > before it ({before})", "ok": after > before})
    return out


def summarise_arms(results: dict[tuple[str, int], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    arms: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        runs = [result for (name, _), result in sorted(results.items()) if name == arm.name]
        if not runs:
            continue
        trained = [run for run in runs if run["evaluation"] is not None]
        arms[arm.name] = {
            "label": arm.label, "ablation": arm.ablation, "keep_k": arm.keep_k,
            "seeds": [run["seed"] for run in runs], "selected": [run["selection"]["selected"] for run in runs],
            "pass@1": aggregate([run["evaluation"] for run in trained]) if trained else None,
            "trained_on": [run["selection"]["composition"] for run in runs],
            "answer_shapes": [run["evaluation"]["answer_shapes"] for run in trained],
            "tokens_per_step": [run["training"]["tokens_per_step"] for run in trained],
            "packed": [run["training"]["samples"] for run in trained],
            "steps": sorted({run["training"]["steps"] for run in trained}),
            "truncated_answers": [run["evaluation"]["truncated"] for run in trained]}
    return arms


def _cell(entry: dict[str, Any] | None) -> str:
    return f"{entry['mean']:.3f} ± {entry['std']:.3f}" if entry else "-"


def _shares(parts: list[dict[str, Any]], key: str) -> str:
    values = [part[key] for part in parts if part.get(key) is not None and part.get("samples")]
    return f"{sum(values) / len(values):.2f}" if values else "-"


def format_table(report: dict[str, Any]) -> str:
    settings, arms = report["settings"], report["arms"]
    shared = settings["shared"]
    lines = [f"SOPHIA selection ablations: {report['workdir']}",
             f"one rollout store ({shared['images']} questions, K={shared['K']}, N={shared['N']}), "
             f"{settings['steps']} steps x {settings['packs_per_step']} packs per arm from the same warmed-up policy; "
             f"{report['eval_questions']} held-out questions, sampled at temperature {shared['eval_temperature']}, "
             f"top-p {shared['eval_top_p']}; seeds {report['seeds']}", "",
             f"{'arm':<20} {'pass@1 all':>15} {'colour':>15} {'count':>15} {'selected':>9} {'tok/step':>9}  "
             "trained on: clean/detour/guess/wrong"]
    base = report["baseline"]
    lines.append(f"{'before the update':<20} {_cell(base['all']):>15} {_cell(base['colour']):>15} "
                 f"{_cell(base['count']):>15}")
    chance = report["chance"]
    lines.append(f"{'chance':<20} {chance['all']:>15.3f} {chance['colour']:>15.3f} {chance['count']:>15.3f}"
                 "  (a random value of the question's type)")
    majority = report["majority"]
    lines.append(f"{'majority answer':<20} {majority['all']:>15.3f} {majority.get('colour', 0):>15.3f} "
                 f"{majority.get('count', 0):>15.3f}  (always the type's most common held-out answer)")
    for arm in arms.values():
        rates = arm["pass@1"] or {}
        tokens = arm["tokens_per_step"]
        mix = "/".join(_shares(arm["trained_on"], key) for key in ("clean", "detour", "guess", "wrong"))
        lines.append(f"{arm['label']:<20} {_cell(rates.get('all')):>15} {_cell(rates.get('colour')):>15} "
                     f"{_cell(rates.get('count')):>15} {sum(arm['selected']) / len(arm['selected']):>9.1f} "
                     f"{(sum(tokens) / len(tokens)) if tokens else 0:>9.0f}  {mix}")
    lines += ["", "the paper's orderings (Table 5: Random 51.53 < w/o CR 53.54 < w/o S 54.74 < SOPHIA 55.13; "
              "Table A5: Keep-2 50.63 ~ Keep-1 50.74), here:"]
    lines += [_verdict_line(entry) for entry in report["orderings"]]
    blind = report["blind"]
    lines += ["", f"above the blind level, the higher of chance and the majority answer (all {blind['all']:.3f}, "
              f"colour {blind['colour']:.3f}, count {blind['count']:.3f}; at it, an arm has learnt the answer's "
              "format or prior, not to read the image):"]
    lines += [_verdict_line(entry) for entry in report["above_chance"]]
    lines += ["", "answers, all seeds: unanswered / wrong type / pass@1 among answers of the right type "
              f"(colour, count; blind level {blind['colour']:.3f}, {blind['count']:.3f}):"]
    for arm in arms.values():
        forms = arm.get("answer_forms")
        if forms and forms["answers"]:
            right = forms["right_of_well_typed"]
            cells = ", ".join("-" if right[kind] is None else f"{right[kind]:.3f}" for kind in CHANCE)
            lines.append(f"  {arm['label']:<20} {forms['unanswered']:.3f} / {forms['wrong_type']:.3f} / {cells}")
    lines += ["", "rollout signals (the shared store):", *format_signals(report["rollout"]["signals"]), "",
              "checks:"] + [f"  [{'ok' if check['ok'] else 'FAILED'}] {check['check']}" for check in report["checks"]]
    cpu = report["stages_cpu_seconds"]
    lines += ["", f"wall time {report['wall_seconds']:.0f} s this run; {report['stages_seconds']:.0f} s for all "
              f"stages when they ran, using {cpu:.0f} CPU s (on 2 cores alone: {cpu / 2:.0f}-{cpu:.0f} s)",
              f"files: ablations.json, ablations.txt, ablations.png, arms/ARM/seedS/ in "
              f"{report['workdir']}"]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Bars of mean pass@1 ± std per arm, for all questions and each type; the baseline dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [arm for arm in report["arms"].values() if arm["pass@1"]]
    figure, axis = plt.subplots(figsize=(9, 4))
    width = 0.8 / max(len(arms), 1)
    for index, arm in enumerate(arms):
        means = [arm["pass@1"][kind]["mean"] for kind in TYPES]
        stds = [arm["pass@1"][kind]["std"] for kind in TYPES]
        axis.bar([x + index * width for x in range(len(TYPES))], means, width, yerr=stds, capsize=3,
                 label=arm["label"])
    for x, kind in enumerate(TYPES):
        axis.hlines(report["baseline"][kind]["mean"], x - width / 2, x + 0.8 - width / 2, colors="black",
                    linestyles="dashed", label="before the update" if x == 0 else None)
    axis.set_xticks([x + 0.4 - width / 2 for x in range(len(TYPES))], TYPES)
    axis.set_ylabel(f"pass@1 (mean ± std over {len(report['seeds'])} seeds)")
    axis.set_ylim(0, 1)
    axis.legend(fontsize=8, ncol=2)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_report(demo: Demo, settings: AblationSettings, rollout: dict[str, Any], baseline: dict[int, dict],
                 results: dict[tuple[str, int], dict[str, Any]], wall_seconds: float) -> dict[str, Any]:
    from sophia_tools.demo import write_json

    arms = summarise_arms(results)
    for name, arm in arms.items():
        arm["answer_forms"] = arm_answer_forms(demo, name, arm["seeds"])
    base = aggregate(list(baseline.values()))
    first_seed = sorted(baseline)[0]
    chance = chance_level(baseline[first_seed])
    majority = majority_level(eval_records(demo.path("baseline", f"seed{first_seed}"), required=True))
    blind = blind_level(baseline[first_seed], chance, majority)
    report = {"workdir": str(demo.workdir), "settings": settings.as_record(), "seeds": sorted(baseline),
              "eval_questions": baseline[first_seed]["questions"], "baseline": base, "arms": arms,
              "orderings": orderings({name: arm for name, arm in arms.items() if arm["pass@1"]}),
              "chance": chance, "majority": majority, "blind": blind, "above_chance": above_chance(arms, blind),
              "checks": checks(arms, base), "rollout": rollout, "wall_seconds": round(wall_seconds, 1),
              "stages_seconds": round(sum(result["seconds"] for result in demo.results.values()), 1),
              "stages_cpu_seconds": round(sum(result.get("cpu_seconds") or 0 for result in demo.results.values()), 1),
              "stage_seconds": {name: {"wall": result["seconds"], "cpu": result.get("cpu_seconds")}
                                for name, result in demo.results.items()},
              "paper": {"table5": PAPER_TABLE5, "table_a5": PAPER_TABLE_A5}}
    report["table"] = format_table(report)
    plot(report, demo.path("ablations.png"))
    write_json(demo.path("ablations.json"), report)
    demo.path("ablations.txt").write_text(report["table"] + "\n", encoding="utf-8")
    return report
