"""``sophia-rollout filter``: keep the GRPO training questions the policy solves about half the time.

    sophia-rollout filter --config RECIPE [grpo.filter.samples=16 ...]

What (the paper's GRPO data, App. B.2): every question of ``grpo.filter.inputs`` is sampled
``grpo.filter.samples`` times (16) by the policy (``grpo.generator``: engine, checkpoint,
temperature, seed) with the slow-thinking system prompt, each response is verified against the
gold answer, and the questions whose pass rate lies in ``[min_pass_rate, max_pass_rate]``
([0.4, 0.6]) are written to ``grpo.filter.out`` (rollout-input JSONL plus ``pass_rate``), which
the GRPO loop reads as ``grpo.questions``.

Resumable like the other rollout stages: every question's pass rate is appended (and flushed) to
``OUT.passrates.jsonl`` as soon as it is known; a rerun skips the questions recorded there. The
kept file is written atomically at the end, from the records, so it never holds a partial list.
Rejects are counted with a reason: ``too_hard`` / ``too_easy`` (outside the band), or the engine's
failure reason (e.g. ``unreadable_image``); input rows that cannot be used are counted as the
input reader's rejects.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sophia_common.atomic import write_text_atomic
from sophia_common.cli import UserError
from sophia_common.config import ConfigError, build, doc, read_recipe
from sophia_common.log import get_logger

log = get_logger("sophia.rollout.question_filter")


@dataclass
class FilterSection:
    """``grpo.filter``: which questions GRPO trains on."""

    inputs: list[str] = doc("rollout-input files (id, image, question, answer) to filter", [])
    out: str = doc("kept questions (JSONL, rollout-input columns + pass_rate); grpo.questions reads it", "")
    samples: int = doc("samples per question (paper: 16)", 16)
    min_pass_rate: float = doc("keep questions with pass rate >= this (paper: 0.4)", 0.4)
    max_pass_rate: float = doc("... and <= this (paper: 0.6)", 0.6)
    max_tiles: int = doc("image tiles per question (InternVL dynamic tiling)", 12)
    system_prompt: str | None = doc("system prompt file (the slow-thinking one); null: none", None)

    def __post_init__(self) -> None:
        if self.samples < 1 or not 0.0 <= self.min_pass_rate <= self.max_pass_rate <= 1.0:
            raise ValueError("need samples >= 1 and 0 <= min_pass_rate <= max_pass_rate <= 1")


def load_filter(path: str | None, overrides: list[str]) -> tuple[FilterSection, Any, Any]:
    """(filter settings, generator EngineConfig, verifier settings) from the recipe's ``grpo`` section."""
    from rollout.config import VerifierConfig
    from rollout.engine_api import EngineConfig

    raw = read_recipe(path, overrides).get("grpo") or {}
    if "filter" not in raw or "generator" not in raw:
        raise ConfigError(f"{path or 'overrides'}: sophia-rollout filter needs grpo.filter and grpo.generator")
    return (build(FilterSection, raw["filter"], "grpo.filter"), build(EngineConfig, raw["generator"], "grpo.generator"),
            build(VerifierConfig, raw.get("verifier") or {}, "grpo.verifier"))


def progress_path(out: Path) -> Path:
    return out.with_name(out.name + ".passrates.jsonl")


def _recorded(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill: the question is sampled again
        records[record["id"]] = record
    return records


def verdict(pass_rate: float, settings: FilterSection) -> str:
    if pass_rate < settings.min_pass_rate - 1e-9:
        return "too_hard"
    if pass_rate > settings.max_pass_rate + 1e-9:
        return "too_easy"
    return "kept"


def filter_questions(settings: FilterSection, engine: Any, generator: Any, verify: Any) -> dict[str, Any]:
    """Sample, verify, record and write the kept questions; returns counts (see module doc)."""
    from rollout.engine_api import Failure, Request, SamplingParams
    from rollout.inputs import read_inputs

    out = Path(settings.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    inputs = read_inputs(settings.inputs, check_images=False)
    system = Path(settings.system_prompt).read_text(encoding="utf-8").strip() if settings.system_prompt else None
    done = _recorded(progress_path(out))
    params = SamplingParams(n=settings.samples, temperature=generator.temperature, top_p=generator.top_p,
                            max_tokens=generator.max_tokens, seed=generator.seed)
    with progress_path(out).open("a", encoding="utf-8") as progress:
        for row in (r for r in inputs.rows if r.id not in done):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": row.question}]
            (result,) = engine.generate([Request(tuple(messages), key=row.id, image=row.image)], params)
            if isinstance(result, Failure):
                record = {"id": row.id, "pass_rate": None, "verdict": result.reason}
            else:
                checks = verify([{"response": c.text, "answer": row.answer, "truncated": c.finish_reason == "length"}
                                 for c in result])
                rate = sum(r.correct for r in checks) / len(checks)
                record = {"id": row.id, "pass_rate": rate, "verdict": verdict(rate, settings)}
            progress.write(json.dumps(record) + "\n")
            progress.flush()
            done[row.id] = record
    kept = [_as_input(row, done[row.id]["pass_rate"]) for row in inputs.rows if done[row.id]["verdict"] == "kept"]
    write_text_atomic(out, "".join(json.dumps(k) + "\n" for k in kept))
    counts = Counter(done[row.id]["verdict"] for row in inputs.rows)
    return {"questions": len(inputs.rows), "kept": len(kept), "rejects": dict(counts - Counter(kept=len(kept))),
            "input_rejects": inputs.reject_counts(), "out": str(out)}


def _as_input(row: Any, pass_rate: float) -> dict[str, Any]:
    image = str(row.image) if isinstance(row.image, Path) else None
    if image is None and row.image is not None:
        import base64

        return {"id": row.id, "question": row.question, "answer": row.answer, "source": row.source,
                "image_b64": base64.b64encode(row.image).decode(), "pass_rate": pass_rate}
    return {"id": row.id, "question": row.question, "answer": row.answer, "source": row.source,
            "difficulty": row.difficulty, "image": image, "pass_rate": pass_rate}


def filter_main(argv: list[str] | None = None) -> int:
    from rollout.engines import make_engine
    from rollout.verifier import VerifierPool

    parser = argparse.ArgumentParser(prog="sophia-rollout filter", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="recipe YAML with a grpo: section")
    args, overrides = parser.parse_known_args(argv)
    settings, generator, verifier = load_filter(args.config, overrides)
    if not settings.inputs or not settings.out:
        raise UserError("grpo.filter.inputs and grpo.filter.out must be set")
    with make_engine(generator, "grpo.generator", vision=True, max_tiles=settings.max_tiles) as engine, \
            VerifierPool(workers=verifier.workers, timeout_s=verifier.timeout_s) as pool:
        report = filter_questions(settings, engine, generator, pool.verify_batch)
    print(json.dumps(report))
    return 0
