"""``python -m sophia_tools.ablations [--workdir .ablations] [--smoke] [--arms a,b] [--seeds 0,1,2]
[--set KEY=VALUE ...] [--until rollout]``.

Runs the stages of :mod:`sophia_tools.ablations` in one workdir; every stage leaves
``done/STAGE.json`` and is reused on the next run, so an interrupted run resumes and a finished
arm is never trained twice. A workdir remembers its settings and refuses others (``--arms`` and
``--seeds`` pick a subset of the recorded ones; the report covers what has been run).

``--set warmup_images=640`` changes a size of the shared stages (a field of
:class:`sophia_tools.demo.DemoSettings`); ``--until rollout`` stops after the shared rollout and
prints its signals. Together they probe a task or warm-up setting in a few minutes before any arm
is trained (docs/ABLATIONS.md, "Probes").
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from sophia_tools.ablations import ARMS, FULL_ABLATIONS, SMOKE_ABLATIONS, AblationSettings, Arm, arm_named
from sophia_tools.demo import RECIPE, Demo, DemoError, json_lines, override, read_json, write_json
from sophia_tools.demo.__main__ import (
    heldout_command,
    metrics,
    rollout_overrides,
    stage_convert_policy,
    stage_fixtures,
    stage_task,
    stage_warmup_captioner,
    stage_warmup_reasoner,
    training_numbers,
)

SHARED_STAGES = {"fixtures": stage_fixtures, "task": stage_task, "warmup_captioner": stage_warmup_captioner,
                 "warmup_reasoner": stage_warmup_reasoner, "convert_policy": stage_convert_policy}
ROLLOUT = ("caption", "reason", "score")  # the shared store is never selected from: each arm selects


def rollout_cli(demo: Demo) -> list[str]:
    return [demo.python, "-m", "sophia_tools.rollout_cli"]


def stage_rollout(demo: Demo) -> dict[str, Any]:
    """One store for every arm: captions, trajectories and scores (no selection), its stats and signals."""
    from sophia_tools.demo.signals import rollout_signals

    reports = {}
    for name in ROLLOUT:
        out = demo.run(name, [*rollout_cli(demo), name, "--config", str(RECIPE), *rollout_overrides(demo)],
                       VLLM_CPU_KVCACHE_SPACE="1")
        reports.update({report["stage"]: report for report in json_lines(out)})
    demo.run("stats", [*rollout_cli(demo), "stats", "--config", str(RECIPE), *rollout_overrides(demo),
                       "--out", str(demo.path("rollout_stats"))])
    stats = read_json(demo.path("rollout_stats", "stats.json"))
    alpha = stats["selection"]["alpha"]
    return {"reports": reports, "counts": stats["counts"], "caption_rewards": stats["caption_rewards"],
            "alpha": alpha, "signals": rollout_signals(demo.path("store"), demo.path("task", "rollout_inputs.jsonl"),
                                                       alpha=alpha)}


def evaluate(demo: Demo, model: Path, out: Path, seed: int) -> dict[str, Any]:
    """The policy in ``model`` answers the held-out questions (``sophia-eval``'s protocol from the recipe's
    ``eval:`` section, sampled with ``seed``, batched: :mod:`sophia_tools.demo.heldout`)."""
    from sophia_tools.ablations.report import eval_records
    from sophia_tools.demo.signals import composition

    result = json_lines(demo.run("evaluate", heldout_command(demo, model, out, seed)))[-1]
    records = eval_records(out, required=True)
    result["answer_shapes"] = composition([{"text": r["response"] or "", "correct": bool(r["correct"]),
                                            "num_tokens": r["tokens"]} for r in records])
    return result


def stage_baseline(demo: Demo, seed: int) -> dict[str, Any]:
    """The warmed-up policy's own pass@1, before any update (the common starting point)."""
    return evaluate(demo, demo.path("warmup", "captioner", "hf"), demo.path("baseline", f"seed{seed}"), seed)


def select_arm(demo: Demo, arm: Arm, seed: int, work: Path) -> dict[str, Any]:
    """Copy the shared store into ``work/store`` (``sophia-rollout merge`` of one store: hard links), and
    run ``sophia-rollout select`` there with the arm's settings."""
    from sophia_tools.demo.signals import composition, read_table

    shutil.rmtree(work / "store", ignore_errors=True)
    demo.run("copy-store", [*rollout_cli(demo), "merge", "--sources", str(demo.path("store")),
                            "--dest", str(work / "store")])
    overrides = [*rollout_overrides(demo), override("rollout.store_dir", work / "store"),
                 override("rollout.selected_out", work / "selected.jsonl"), *arm.overrides(seed)]
    report = json_lines(demo.run("select", [*rollout_cli(demo), "select", "--config", str(RECIPE), *overrides]))[-1]
    selected = read_table(work / "store" / "selected", ["id", "k", "n", "response", "num_tokens"])
    scores = {(s["id"], s["k"], s["n"]): s["correct"]
              for s in read_table(demo.path("store", "scores"), ["id", "k", "n", "correct"])}
    shapes = composition([{**row, "correct": scores[(row["id"], row["k"], row["n"])]} for row in selected])
    return {"selected": report["written"], "questions_decided": report.get("questions_decided"),
            "composition": shapes}


def train_arm(demo: Demo, settings: AblationSettings, seed: int, work: Path) -> dict[str, Any]:
    """Pack the arm's selection alone and run the SOPHIA update from the warmed-up policy; export to HF."""
    sources = [{"path": str(work / "selected.jsonl"), "kind": "trajectories", "weight": 1.0}]
    pack = json_lines(demo.run("pack", [*rollout_cli(demo), "pack", "--config", str(RECIPE),
                                        override("pack.out", work / "packed"),
                                        override("pack.tokenizer_dir", demo.path("policy_mcore", "hf_files")),
                                        override("pack.rollout_store", work / "store"),
                                        override("pack.sources", sources),
                                        f"pack.max_seq_len={settings.pack_tokens}", "--force"]))[-1]
    train = work / "train"
    shutil.rmtree(train, ignore_errors=True)
    demo.run("train", [*demo.torchrun(), "-m", "sophia_tools.train_cli", "--config", str(RECIPE),
                       override("model.mcore_dir", demo.path("policy_mcore")), override("data.path", work / "packed"),
                       "train.mode=sophia", f"train.steps={settings.steps}",
                       f"train.packs_per_step={settings.packs_per_step}", f"data.seed={seed}",
                       override("checkpoint.save_dir", train / "checkpoints"), "checkpoint.save_interval=0",
                       "checkpoint.resume=false", "logging.tensorboard_dir=null",
                       override("logging.metrics_file", train / "metrics.jsonl"), "--export-hf", str(work / "hf")],
             OMP_NUM_THREADS="1")
    shutil.rmtree(train / "checkpoints", ignore_errors=True)  # the export is what is evaluated and kept
    numbers = training_numbers(metrics(train / "metrics.jsonl"))
    return {"packs": pack["packs"], "samples": pack["samples_packed"], "packed_tokens": pack["tokens"],
            "steps": numbers["steps"], "tokens": numbers["tokens"],
            "tokens_per_step": round(numbers["tokens"] / numbers["steps"], 1),
            "loss_first": numbers["loss_first"], "loss_last": numbers["loss_last"], "loss": numbers["loss"]}


def stage_arm(demo: Demo, settings: AblationSettings, arm: Arm, seed: int) -> dict[str, Any]:
    work = demo.path("arms", arm.name, f"seed{seed}")
    for stale in ("hf", "eval"):  # an interrupted attempt's export and answers belong to another model
        shutil.rmtree(work / stale, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    selection = select_arm(demo, arm, seed, work)
    if not selection["selected"]:  # nothing to train on: recorded, and a failed check of a full run
        return {"arm": arm.name, "seed": seed, "selection": selection, "training": None, "evaluation": None}
    training = train_arm(demo, settings, seed, work)
    return {"arm": arm.name, "seed": seed, "selection": selection, "training": training,
            "evaluation": evaluate(demo, work / "hf", work / "eval", seed)}


def check_settings(demo: Demo, settings: AblationSettings) -> None:
    record, wanted = demo.path("ablation_settings.json"), settings.as_record()
    if record.is_file() and read_json(record) != wanted:
        raise DemoError(f"{demo.workdir} was made with other ablation settings ({record}); use another "
                        "--workdir (or remove it)")
    write_json(record, wanted)


def run(workdir: Path, settings: AblationSettings, arms: list[str], seeds: list[int],
        until: str | None = None) -> dict[str, Any]:
    """Every stage in order; with ``until="rollout"`` only the shared ones (returns the rollout's record)."""
    from sophia_tools.ablations.report import write_report

    started = time.perf_counter()
    demo = Demo(workdir, settings.shared, label="ablations")
    check_settings(demo, settings)
    for name, body in SHARED_STAGES.items():
        demo.stage(name, lambda body=body: body(demo))
    rollout = demo.stage("rollout", lambda: stage_rollout(demo))
    if until == "rollout":
        return rollout
    baseline = {seed: demo.stage(f"baseline_seed{seed}", lambda seed=seed: stage_baseline(demo, seed))
                for seed in seeds}
    results = {}
    for seed in seeds:  # every arm of a seed before the next seed: a partial run compares all arms
        for name in arms:
            results[(name, seed)] = demo.stage(f"arm_{name}_seed{seed}", lambda name=name, seed=seed: stage_arm(
                demo, settings, arm_named(name), seed))
    return write_report(demo, settings, rollout, baseline, results, wall_seconds=time.perf_counter() - started)


def _subset(text: str | None, recorded: tuple, kind: type) -> list:
    if not text:
        return list(recorded)
    wanted = [kind(item) for item in text.split(",") if item.strip()]
    unknown = [item for item in wanted if item not in recorded]
    if unknown:
        raise DemoError(f"{unknown} not among this run's {list(recorded)}")
    return wanted


def with_shared_changes(settings: AblationSettings, assignments: list[str]) -> AblationSettings:
    """``settings`` with ``KEY=VALUE`` changes to its shared demo sizes, each value of the field's type."""
    fields = {name: type(value) for name, value in asdict(settings.shared).items()}
    changes: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or key not in fields:
            raise DemoError(f"--set {assignment!r}: expected KEY=VALUE with KEY one of {', '.join(fields)}")
        try:
            changes[key] = fields[key](text)
        except ValueError as exc:
            raise DemoError(f"--set {assignment!r}: {key} takes a {fields[key].__name__} ({exc})") from exc
    return replace(settings, shared=replace(settings.shared, **changes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sophia_tools.ablations", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".ablations"),
                        help="where everything goes (default .ablations)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one seed: the pipeline only (tests)")
    parser.add_argument("--arms", help=f"comma-separated subset of {','.join(arm.name for arm in ARMS)}")
    parser.add_argument("--seeds", help="comma-separated subset of the settings' seeds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a size of the shared stages (a DemoSettings field, e.g. warmup_images=640)")
    parser.add_argument("--until", choices=("rollout",), help="stop after the shared rollout; print its signals")
    args = parser.parse_args(argv)
    try:
        settings = with_shared_changes(SMOKE_ABLATIONS if args.smoke else FULL_ABLATIONS, args.set)
        report = run(args.workdir, settings, _subset(args.arms, settings.arms, str),
                     _subset(args.seeds, settings.seeds, int), until=args.until)
    except DemoError as exc:
        print(f"\n[ablations] FAILED: {exc}", file=sys.stderr)
        return 1
    if args.until == "rollout":
        from sophia_tools.demo.signals import format_signals

        print("\n".join(["rollout signals (the shared store):", *format_signals(report["signals"])]))
        return 0
    print(report["table"])
    failed = [check["check"] for check in report["checks"] if not check["ok"]]
    if failed and not args.smoke:  # at smoke sizes the models are barely warmed up: the pipeline only
        print(f"\n[ablations] FAILED checks: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
