"""One evaluation run: read the benchmarks, generate what is missing, score it, write the results.

    from evaluation.config import EvalConfig
    from evaluation.run import evaluate, parse_benchmarks
    results = evaluate(EvalConfig(), "runs/38b/export_hf",
                       parse_benchmarks("mathvista=/data/MathVista,generic:jsonl=held_out.jsonl"), "runs/eval/38b")

Layout of ``out_dir``: one directory per benchmark with ``store/`` (the resumable, content-keyed
parquet tables ``responses`` and ``scores``, keyed by the generation key of
``evaluation.requests`` and the sample index; ``rejects`` for requests the engine could not serve),
``records.jsonl`` (one line per question and sample: response, extracted answer, verdict, reason,
tokens, finish reason) and ``benchmark.json`` (its numbers); at the top ``results.json``,
``results.md`` and ``results.png`` over every benchmark directory present (``evaluation.report``).

Resumable: each batch of responses and of verdicts is one atomic shard, so a run killed at any
point loses at most a batch; a rerun generates only keys that are neither stored nor rejected,
and scores only responses without a verdict under the current scorer. The engine is started
only when something is left to generate. Array tasks (one benchmark each) share ``out_dir``; the
last ``sophia-eval report`` rewrites the top-level files from all benchmark directories.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from evaluation.config import EvalConfig
from evaluation.formats import FORMATS, read_benchmark
from evaluation.report import summarize_benchmark, write_results
from evaluation.requests import generation_key, messages, model_fingerprint, request_image
from evaluation.scoring import Item, Scorer
from evaluation.tables import (
    GENERATE,
    RESPONSE_KEYS,
    RESPONSE_SCHEMA,
    RESPONSES,
    SCORE_KEYS,
    SCORE_SCHEMA,
    SCORES,
    BenchmarkSpec,
    Plan,
    read_table,
)
from rollout.engine_api import Engine, Failure, Request, SamplingParams
from rollout.engines import make_engine
from rollout.prompts import resolve_prompt_path
from rollout.stages import chunks, generate_robustly
from rollout.store import Store, reject_record
from sophia_common.cli import UserError
from sophia_common.log import get_logger, progress

PERMANENT_FAILURES = ("unreadable_image", "prompt_too_long")
"""Engine failures stored as rejects (scored 0); others (engine errors) are retried by the next run."""

EngineFactory = Callable[..., Engine]
_HUB_ID = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
log = get_logger("sophia.evaluation.run")


def parse_benchmarks(text: str | Sequence[str]) -> list[BenchmarkSpec]:
    """``NAME[:FORMAT]=PATH`` items, comma-separated; FORMAT defaults to NAME."""
    items = [part.strip() for chunk in ([text] if isinstance(text, str) else text)
             for part in chunk.split(",") if part.strip()]
    specs = []
    for item in items:
        label, sep, path = item.partition("=")
        name, _, format_name = label.partition(":")
        format_name = format_name or name
        if not sep or not name or not path:
            raise UserError(f"--benchmarks: {item!r} is not NAME[:FORMAT]=PATH")
        if format_name not in FORMATS:
            raise UserError(f"--benchmarks: {item!r}: unknown format {format_name!r}; known: {', '.join(FORMATS)}")
        specs.append(BenchmarkSpec(name, format_name, Path(path)))
    names = [spec.name for spec in specs]
    if not specs or len(set(names)) != len(names):
        raise UserError(f"--benchmarks: need at least one benchmark and distinct names, got {names}")
    return specs


def evaluate(config: EvalConfig, model: str | Path, benchmarks: Sequence[BenchmarkSpec], out_dir: str | Path, *,
             recipe_dir: Path | None = None, engine_factory: EngineFactory = make_engine,
             llm_client: Any = None) -> dict[str, Any]:
    """Evaluate ``model`` on ``benchmarks`` into ``out_dir`` (resuming what is there); the results dict."""
    started, out_dir = time.perf_counter(), Path(out_dir)
    policy = dataclasses.replace(config.policy, model=str(model))
    if not policy.model:
        raise UserError("no model: give --model HF_DIR (or eval.policy.model)")
    local = policy.engine == "transformers" or (policy.engine == "vllm" and not _HUB_ID.match(policy.model))
    if local and not Path(policy.model).is_dir():
        raise UserError(f"--model {policy.model}: not a checkpoint directory")
    system = _system_prompt(config, recipe_dir)
    settings = {"model": model_fingerprint(policy.model), "temperature": policy.temperature, "top_p": policy.top_p,
                "max_tokens": policy.max_tokens, "seed": policy.seed, "max_tiles": policy.max_tiles,
                "composite_side": config.composite_side}
    plans = [_plan(spec, config, system, settings, out_dir) for spec in benchmarks]
    _generate(plans, config, policy, engine_factory)
    with Scorer(config, recipe_dir, client=llm_client) as scorer:
        for plan in plans:
            _score(plan, config, scorer)
        for plan in plans:
            summarize_benchmark(plan, config, scorer, str(model))
    results = write_results(out_dir)
    log.info("evaluated %s on %s in %.1f s: %s", model, ", ".join(p.spec.name for p in plans),
             time.perf_counter() - started, {p.spec.name: {"generated": p.generated, "scored": p.scored}
                                             for p in plans})
    return results


def _system_prompt(config: EvalConfig, recipe_dir: Path | None) -> str:
    if not config.system_prompt:
        return ""
    path = resolve_prompt_path(config.system_prompt, recipe_dir)
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UserError(f"eval.system_prompt: cannot read {path} ({exc.strerror or exc})") from exc


def _plan(spec: BenchmarkSpec, config: EvalConfig, system: str, settings: dict, out_dir: Path) -> Plan:
    questions = read_benchmark(spec.name, spec.format, spec.path, config.response_hint)
    turns = [messages(question, system) for question in questions]
    keys = [generation_key(question, turn, settings) for question, turn in zip(questions, turns, strict=True)]
    # Seeds come from the question, prompt and sampling, never from the model's files: two models (or
    # the same weights saved again) answer with the same random draws, so a paired compare is fair.
    sampling = {key: value for key, value in settings.items() if key != "model"}
    draw_keys = [generation_key(question, turn, sampling) for question, turn in zip(questions, turns, strict=True)]
    store = Store(out_dir / spec.name / "store", writer="eval")
    log.info("%s: %d questions from %s (%s)", spec.name, len(questions), spec.path, spec.format)
    return Plan(spec, questions, turns, keys, store, samples=config.samples, draw_keys=draw_keys)


# ---------------------------------------------------------------- generation


def _todo(plan: Plan, samples: int) -> list[tuple[int, int]]:
    """(question index, sample) pairs neither stored nor rejected."""
    done = plan.store.table(RESPONSES, RESPONSE_KEYS).existing_keys()
    done |= plan.store.rejected_keys(GENERATE, ("id", "k"))
    return [(index, sample) for index, key in enumerate(plan.keys) for sample in range(samples)
            if (key, sample) not in done]


def _generate(plans: list[Plan], config: EvalConfig, policy: Any, engine_factory: EngineFactory) -> None:
    work = [(plan, _todo(plan, config.samples)) for plan in plans]
    total = sum(len(todo) for _, todo in work)
    if not total:
        return
    params = SamplingParams.of(policy, 1)
    with engine_factory(policy, "eval.policy", vision=True, max_tiles=policy.max_tiles) as engine, \
            progress(total=total, desc="generate", unit="response") as bar:
        for plan, todo in work:
            responses = plan.store.table(RESPONSES, RESPONSE_KEYS)
            for batch in chunks(todo, config.batch_size):
                images = {index: request_image(plan.questions[index], config.composite_side) for index, _ in batch}
                requests = [Request(plan.turns[index], key=f"{plan.draw_keys[index]}:{sample}", image=images[index])
                            for index, sample in batch]
                outputs = generate_robustly(engine, requests, params)
                rows, rejects = _records(plan, batch, outputs)
                responses.write(pa.Table.from_pylist(rows, schema=RESPONSE_SCHEMA))
                plan.store.write_rejects(rejects)
                plan.generated += len(rows)
                bar.update(len(batch))


def _records(plan: Plan, batch: Sequence[tuple[int, int]],
             outputs: list[list[Any] | Failure]) -> tuple[list[dict], list[dict]]:
    rows, rejects = [], []
    for (index, sample), output in zip(batch, outputs, strict=True):
        key, item_id = plan.keys[index], plan.questions[index].id
        if isinstance(output, Failure):
            if output.reason in PERMANENT_FAILURES:
                rejects.append(reject_record(key, GENERATE, output.reason, f"{item_id}: {output.detail}",
                                             k=sample))
            else:
                log.warning("%s %s sample %d: %s (%s); the next run retries it", plan.spec.name, item_id,
                            sample, output.reason, output.detail[:200])
            continue
        completion = output[0]
        rows.append({"key": key, "sample": sample, "id": item_id, "text": completion.text,
                     "num_tokens": completion.num_tokens, "finish_reason": completion.finish_reason})
    return rows, rejects


# ---------------------------------------------------------------- scoring


def _score(plan: Plan, config: EvalConfig, scorer: Scorer) -> None:
    by_key = {key: question for key, question in zip(plan.keys, plan.questions, strict=True)}
    scores = plan.store.table(SCORES, SCORE_KEYS)
    done = scores.existing_keys()
    todo = [row for row in read_table(plan.store, RESPONSES, RESPONSE_KEYS)
            if row["key"] in by_key and (row["key"], row["sample"], scorer.fingerprint(by_key[row["key"]])) not in done]
    for batch in chunks(todo, config.batch_size):
        items = [Item(by_key[row["key"]], row["text"], row["finish_reason"] == "length") for row in batch]
        rows = []
        for row, item, verdict in zip(batch, items, scorer.score(items), strict=True):
            if verdict is None:
                continue
            rows.append({"key": row["key"], "sample": row["sample"], "scorer": scorer.fingerprint(item.question),
                         "id": row["id"], "extracted": verdict.extracted, "correct": verdict.correct,
                         "reason": verdict.reason, "method": verdict.method})
        scores.write(pa.Table.from_pylist(rows, schema=SCORE_SCHEMA))
        plan.scored += len(rows)
