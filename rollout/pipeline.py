"""``sophia-rollout caption|reason|score|select|run|stats|merge``: the SOPHIA rollout, stage by stage.

    sophia-rollout run     --config RECIPE [key=value ...] [--shard i/n]   # caption -> reason -> score -> select
    sophia-rollout caption --config RECIPE [--shard i/n]                    # ... or one stage at a time
    sophia-rollout stats   --config RECIPE [--out DIR]                      # stats.json + lengths.png
    sophia-rollout merge   --config RECIPE --sources DIR [DIR ...] --dest DIR

What: the recipe's ``rollout:`` section (``RolloutConfig`` below; overrides such as
``rollout.N=4`` or just ``N=4``) names the inputs (docs/ALGORITHM.md §2), the store directory, the
captioner (the policy InternVL), the easy / hard reasoning LLMs, K, N, α, Keep-k, the ablation,
the verifier and the prompt files. Each stage lives in ``rollout.stages``; this module loads the
settings, runs stages and writes the hand-back to packing: ``select`` exports the ``selected``
table as sample records to ``rollout.selected_out`` (parquet or JSONL, read by
``sophia-rollout pack --in``).

Sharding: ``--shard i/n`` processes the input ids task i of n owns (``rollout.sharding``). Array
tasks may share one store (their keys are disjoint; each writes under its own writer tag) or use
one store each (``rollout.store_dir=...`` per task) and ``merge`` them, which checks that no key
is stored twice and that every input id is stored or rejected. A sharded ``select`` does not
export, since it sees only its own questions: run ``select`` once unsharded on the complete store
(it decides nothing again, and exports).

Paths: every relative path of the recipe (inputs, models, ``store_dir``, ``selected_out``, prompt
files) is relative to the working directory, from the YAML file and from overrides alike; a
default prompt file ``prompts/*.txt`` that is not there is read from the shipped ``configs/prompts``.

Output: each command prints its results (one JSON line per stage) on stdout and everything else
(its own log lines, vLLM's logs, progress) on stderr, so ``> results.jsonl`` keeps only results.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout.config import RolloutConfig, load_config
from rollout.engines import check_model, make_engine
from rollout.prompts import Prompts
from rollout.sharding import Shard
from rollout.stages import (
    CAPTIONS,
    DECISIONS,
    SCORES,
    SELECTED,
    TRAJECTORIES,
    EngineFactory,
    RolloutRun,
    StageReport,
    caption_stage,
    read_rows,
    reason_stage,
    score_stage,
    select_stage,
)
from rollout.store import Store, reject_summary
from sophia_common.atomic import atomic_path
from sophia_common.cli import UserError
from sophia_common.config import OVERRIDES_HELP
from sophia_common.log import get_logger, results_stdout

log = get_logger("sophia.rollout.pipeline")

STAGE_HELP = {
    "caption": "Caption step: the policy InternVL (rollout.captioner) writes K captions of every input image, "
               "without seeing the question. Adds to the store's captions table; stored or rejected keys are "
               "skipped, transient failures retried.",
    "reason": "Reasoning step: the reasoning LLM (rollout.reasoner.easy, or .hard for hard questions) answers "
              "each question N times from each caption, as if it saw the image. Needs the captions of "
              "`sophia-rollout caption`; adds to the trajectories table.",
    "score": "Scoring step: verifies the final answer of every trajectory against the gold answer (reward 0 "
             "or 1; cut-off or unfinished thinking scores 0) and gives each caption the mean reward of its "
             "trajectories. Needs `sophia-rollout reason`; adds to the scores table.",
    "select": "Selection step: per question, keeps the keep_k shortest correct trajectories of captions whose "
              "reward reaches alpha (or an ablation), and exports them for `sophia-rollout pack` to "
              "rollout.selected_out. Needs `sophia-rollout score`.",
    "run": "All four steps in order on this shard: caption -> reason -> score -> select.",
    "stats": "Counts, pass rates, caption rewards, rejects and length histograms of a store: stats.json "
             "and lengths.png.",
    "merge": "Join the stores of array-job tasks into one, checking that no key is stored twice, that every "
             "table was made by the same models and settings, and (with --config) that every input id is "
             "stored or rejected.",
}


def open_run(config: RolloutConfig, recipe: str | Path | None, shard: Shard, *,
             engine_factory: EngineFactory = make_engine) -> RolloutRun:
    """The prompts, the store (writer tag: the shard) and this shard's inputs, read once."""
    from rollout.inputs import read_inputs

    prompts = Prompts.load(config.prompts)
    inputs = read_inputs(config.inputs, shard=shard, check_images=False, extra_columns=("choices",))
    store = Store(config.store_path, writer=shard.tag)
    log.info("rollout shard %s: %d usable input rows, %d input rejects; store %s", shard, len(inputs.rows),
             len(inputs.rejects), config.store_path)
    if inputs.rejects:
        log.warning("%d input row(s) rejected (recorded in %s/rejects; fix them and rerun to use them):\n%s",
                    len(inputs.rejects), config.store_path, "\n".join(reject_summary(inputs.rejects)))
    return RolloutRun(config, prompts, store, shard, inputs, engine_factory)


# ---------------------------------------------------------------- export


def export_selected(store: Store, path: Path) -> int:
    """Write the ``selected`` table as sample records (``rollout.inputs`` columns + response, weight).

    Sample ids are ``ID/kKnN`` (unique even with Keep-k > 1); ``question_id``, ``k``, ``n`` keep the
    origin. Images: JSONL gets ``image`` (a path) or ``image_b64``; parquet a string ``image`` column
    when every image is a path, else encoded bytes (paths read). Written to a temp file and renamed.
    """
    rows = sorted(read_rows(store, SELECTED, _SELECTED_COLUMNS), key=lambda row: (row["id"], row["k"], row["n"]))
    records = [{**{name: row[name] for name in _RECORD_COLUMNS}, "id": f"{row['id']}/k{row['k']}n{row['n']}",
                "question_id": row["id"], "k": row["k"], "n": row["n"], "image": row["image"],
                "image_path": row["image_path"]} for row in rows]
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".parquet", ".pq"):
        raise UserError(f"rollout.selected_out: {path} must end in .parquet or .jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp:
        (_write_jsonl if path.suffix.lower() in (".jsonl", ".ndjson") else _write_parquet)(records, temp)
    return len(records)


_RECORD_COLUMNS = ("question", "answer", "source", "response", "weight", "caption_reward", "num_tokens")
_SELECTED_COLUMNS = ["id", "k", "n", "image", "image_path", *_RECORD_COLUMNS]


def _write_jsonl(records: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            image, image_path = record.pop("image"), record.pop("image_path")
            record.update({"image": image_path} if image_path else
                          {"image_b64": base64.b64encode(image).decode("ascii")})
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def _write_parquet(records: list[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    all_paths = bool(records) and all(record["image_path"] for record in records)
    for record in records:
        image, image_path = record.pop("image"), record.pop("image_path")
        record["image"] = image_path if all_paths else image if image is not None else Path(image_path).read_bytes()
    columns = {name: [record[name] for record in records] for name in
               ("id", "question_id", "k", "n", "image", *_RECORD_COLUMNS)}
    image_type = pa.string() if all_paths else pa.binary()
    schema = pa.schema([(name, image_type if name == "image" else _EXPORT_TYPES[name]) for name in columns])
    pq.write_table(pa.table(columns, schema=schema), path)


_EXPORT_TYPES = {"id": "string", "question_id": "string", "k": "int64", "n": "int64", "question": "string",
                 "answer": "string", "source": "string", "response": "string", "weight": "float64",
                 "caption_reward": "float64", "num_tokens": "int64"}


# ---------------------------------------------------------------- command line


@dataclass
class Invocation:
    config: RolloutConfig
    recipe: Path | None
    shard: Shard
    args: argparse.Namespace = field(repr=False)


def _parse(stage: str, argv: list[str], extra: Any = None) -> Invocation:
    parser = argparse.ArgumentParser(
        prog=f"sophia-rollout {stage}", description=STAGE_HELP[stage],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=OVERRIDES_HELP.format(example="rollout.N=4 N=4 rollout.inputs=[a.jsonl,b.parquet]")
        + "\nResults go to stdout (one JSON line per stage), logs and progress to stderr.")
    parser.add_argument("--config", type=Path, required=stage != "merge",
                        help="recipe YAML with a rollout: section" + (" (required)" if stage != "merge" else ""))
    parser.add_argument("--shard", default="0/1", help="process the inputs task i of n owns (0-based), e.g. 3/8 "
                        "(default: 0/1, every input)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides, e.g. rollout.N=4 (or N=4); lists as rollout.inputs=[a,b]")
    if extra:
        extra(parser)
    args = parser.parse_intermixed_args(argv)
    config = load_config(args.config, args.overrides) if args.config else None
    return Invocation(config, args.config, Shard.parse(args.shard), args)  # type: ignore[arg-type]


def _run_command(stage: str, names: list[str], argv: list[str]) -> int:
    """Parse, run ``names`` and print one JSON line per stage on stdout (everything else on stderr)."""
    invocation = _parse(stage, argv)
    with results_stdout() as results:
        for report in run_stages(names, invocation):
            print(json.dumps(report.to_json(), sort_keys=True), file=results)
    return 0


def run_stages(names: list[str], invocation: Invocation, *,
               engine_factory: EngineFactory = make_engine) -> list[StageReport]:
    """Run stages in order on one shard; ``select`` exports unless the run is sharded."""
    stages = {"caption": caption_stage, "reason": reason_stage, "score": score_stage, "select": select_stage}
    config = invocation.config
    if "caption" in names:
        check_model(config.captioner, "captioner")
    if "reason" in names:
        for route, engine in (("easy", config.reasoner.easy), ("hard", config.reasoner.hard)):
            if engine is not None:
                check_model(engine, f"reasoner.{route}")
    run = open_run(invocation.config, invocation.recipe, invocation.shard, engine_factory=engine_factory)
    reports = []
    for name in names:
        report = stages[name](run)
        log.info("%s: %s", name, json.dumps(report.to_json(), sort_keys=True))
        if report.rejected:
            log.warning("%s: %d item(s) rejected this run, by reason: %s (`sophia-rollout stats` lists them)",
                        name, report.rejected, run.store.reject_counts(name))
        if name == "select":
            _export_unless_sharded(run, report)
        reports.append(report)
    return reports


def _export_unless_sharded(run: RolloutRun, report: StageReport) -> None:
    if run.shard.count > 1:
        log.info("select: sharded run (%s), not exporting; run `sophia-rollout select` unsharded on the "
                 "complete store to export", run.shard)
        return
    path = run.config.selected_path
    report.extra["exported"] = export_selected(run.store, path)
    report.extra["selected_out"] = str(path)


def caption_main(argv: list[str]) -> int:
    return _run_command("caption", ["caption"], argv)


def reason_main(argv: list[str]) -> int:
    return _run_command("reason", ["reason"], argv)


def score_main(argv: list[str]) -> int:
    return _run_command("score", ["score"], argv)


def select_main(argv: list[str]) -> int:
    return _run_command("select", ["select"], argv)


def run_main(argv: list[str]) -> int:
    return _run_command("run", ["caption", "reason", "score", "select"], argv)


def stats_main(argv: list[str]) -> int:
    from rollout.stats import write_stats

    invocation = _parse("stats", argv, lambda parser: parser.add_argument(
        "--out", type=Path, help="directory for stats.json and lengths.png (default: the store)"))
    config = invocation.config
    with results_stdout() as results:
        report = write_stats(config, invocation.args.out or config.store_path)
        print(json.dumps(report, sort_keys=True), file=results)
    return 0


def merge_main(argv: list[str]) -> int:
    """Join array tasks' stores; with ``--config``, every input id must be stored or rejected."""
    from rollout.inputs import read_inputs
    from rollout.merge import merge

    def options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--sources", nargs="+", type=Path, required=True, help="the tasks' store dirs")
        parser.add_argument("--dest", type=Path, required=True, help="the merged store (new or partly merged)")

    invocation = _parse("merge", argv, options)
    args, expected = invocation.args, None
    if invocation.config is not None:
        expected = [row.id for row in read_inputs(invocation.config.inputs, check_images=False).rows]
    else:
        log.warning("merge without --config: keys are checked for duplicates only, not for missing ids")
    names = {name for source in args.sources for name in Store(source, writer="merge").table_names()}
    complete = [name for name in (CAPTIONS, TRAJECTORIES, SCORES, DECISIONS) if name in names]
    report = merge(args.sources, args.dest, expected_ids=expected, complete_tables=complete)
    print(json.dumps({"dest": str(args.dest), "rows": report.rows, "shards": report.shards,
                      "rejects": report.reject_counts}, sort_keys=True), file=sys.stdout)
    return 0
