"""``sophia-rollout pack``: sample records -> a packed, length-sorted training dataset (docs/ALGORITHM.md §2).

    sophia-rollout pack --config RECIPE [key=value ...] [--in FILE ...] [--out DIR] [--force]

What: reads the recipe's ``pack.sources`` (and ``--in`` files, as ``trajectories`` sources), renders
each sample as an InternVL conversation (``rollout.pack.render``), tokenises it with the policy's
tokenizer, packs whole samples into sequences of at most ``max_seq_len`` tokens (and
``max_tiles_per_pack`` image tiles) with ``rollout.pack.planner.plan_packs``, and writes the packs,
longest first, as parquet shards plus a manifest (``sophia_common.contract``). The trainer reads
only that directory.

Sample records are rollout input rows (``rollout.inputs``: ``id``, ``image`` / ``image_b64``,
``question``, ``source``) plus ``response`` (the assistant text: a selected trajectory or a VQA
answer) and an optional ``weight`` (the reward weight of Eq. 6, default 1.0). A source's ``kind``
says what its rows are: ``trajectories`` (SOPHIA-selected, with image), ``text`` (Numina / MATH /
AMC style, no image needed) or ``vqa`` (RLAIF-V / WildVision style, with image). Its mixing
``weight`` is the fraction of its rows taken: 0.5 keeps half of them, chosen by ``seed``; 2 takes
every row twice; 2.5 every row twice and half of them a third time.

Why this way: packs are padded to ``max_seq_len`` on the GPU, so how tightly they are filled is
paid in GPU hours (``efficiency`` in the manifest); images are pre-expanded to their exact token
count here so a pack's length is known before training. Nothing is dropped silently: an unusable
row is counted in ``rejects_by_reason`` (before mixing, so mixing fractions are of the usable
rows); every sample the mixing selects ends in exactly one pack or in ``dropped_by_reason``
(``zero_weight``, ``too_many_tokens``, ``too_many_tiles``, ``response_merges_with_prompt``: see
``rollout.pack.render``); ``rejects.jsonl`` in the output names each of them, the log shows the
first few of each reason, and the manifest's per-source counts show what the mixing took. With ``oversize:
truncate`` a too-long sample loses the tail of its response instead (the loss mask is cut with it);
one whose prompt alone is too long is still dropped.

Paths: every relative path of the recipe (``tokenizer_dir``, source paths, ``out``, the two system
prompt files) is relative to the working directory, from the YAML file and from overrides alike;
a default prompt file ``prompts/*.txt`` that is not there is read from the repository's
``configs/prompts`` (``rollout.prompts.resolve_prompt_path``). The dataset is written under
``OUT.tmp-<pid>`` and renamed into place; an existing ``OUT`` is replaced only with ``--force``, and
only if it is a packed dataset.
"""

from __future__ import annotations

import argparse
import json
import math
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rollout.inputs import INPUT_STAGE, InputRow, read_inputs
from rollout.pack.planner import TOO_MANY_TOKENS, PackPlan, plan_packs
from rollout.pack.render import (
    ChatRenderer,
    RenderRejected,
    SystemPrompts,
    Tiling,
    TokenizedSample,
    check_text,
)
from rollout.pack.samples import Sample, SampleRecord
from rollout.pack.write import REJECTS_NAME, check_replaceable, write_dataset
from rollout.prompts import resolve_prompt_path
from rollout.store import reject_record, reject_summary
from sophia_common.cli import UserError
from sophia_common.config import OVERRIDES_HELP, ConfigError, build, doc, read_recipe, to_dict
from sophia_common.contract import SCHEMA_VERSION, Manifest
from sophia_common.log import get_logger, progress
from sophia_common.tokenizer import load_tokenizer

SourceKind = Literal["trajectories", "text", "vqa"]
KINDS_WITHOUT_IMAGE = ("text",)
SAMPLE_COLUMNS = ("response", "weight")

PACK_STAGE = "pack"
EMPTY_RESPONSE = "empty_response"
BAD_WEIGHT = "bad_weight"
ZERO_WEIGHT = "zero_weight"

log = get_logger("sophia.rollout.pack")


@dataclass
class PackSource:
    """One input of the mix."""

    path: str = doc("sample records, parquet or JSONL (id, image, question, response, optional weight "
                    "and source)")
    weight: float = doc("mixing weight: the fraction of this source's rows taken (0.5: half of them, chosen "
                        "by pack.seed; 2: every row twice; 2.5: twice, plus half of them once more)", 1.0)
    kind: SourceKind = doc("trajectories (SOPHIA-selected, image required), text (Numina/MATH/AMC style, "
                           "image optional) or vqa (RLAIF-V/WildVision style, image required)",
                           "trajectories")

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"source {self.path}: mixing weight must be a finite number >= 0, "
                             f"got {self.weight}")


@dataclass
class PackConfig:
    """The ``pack:`` section of a recipe."""

    tokenizer_dir: str | None = doc("the policy's tokenizer (a checkpoint or tokenizer dir); required", None)
    sources: list[PackSource] = doc("the inputs of the mix: a list of {path, weight, kind}", [])
    out: str | None = doc("output directory (or --out)", None)
    max_seq_len: int = doc("tokens per pack (the trainer's sequence length); longer samples are dropped "
                           "or truncated, see oversize", 32768)
    max_tiles_per_pack: int | None = doc("image tiles per pack (bounds vision-tower memory); null: no cap",
                                         None)
    oversize: Literal["drop", "truncate"] = doc("a sample longer than max_seq_len: drop it, or truncate the "
                                                "tail of its response", "drop")
    min_tiles: int = doc("InternVL dynamic tiling: fewest tiles per image", 1)
    max_tiles: int = doc("InternVL dynamic tiling: most tiles per image (max_dynamic_patch)", 12)
    use_thumbnail: bool = doc("add a thumbnail tile to images of several tiles", True)
    image_size: int = doc("tile side in pixels", 448)
    tokens_per_tile: int = doc("<IMG_CONTEXT> tokens per tile (256 for 448-pixel tiles)", 256)
    default_system_prompt: str = doc("system prompt file for responses without <think>...</think> "
                                     "(relative to the working directory; default: the shipped one)",
                                     "prompts/default_system.txt")
    slow_thinking_prompt: str = doc("system prompt file for responses with <think>...</think> "
                                    "(relative to the working directory; default: the shipped one)",
                                    "prompts/slow_thinking_system.txt")
    packs_per_shard: int = doc("packs per parquet shard (the last shard may hold fewer)", 1024)
    seed: int = doc("seed of the mixing-weight sampling", 0)
    rollout_store: str | None = doc("the rollout store the trajectories came from (provenance only)", None)

    def __post_init__(self) -> None:
        problems = [f"{name} must be >= 1, got {getattr(self, name)}" for name in
                    ("max_seq_len", "min_tiles", "image_size", "tokens_per_tile", "packs_per_shard")
                    if getattr(self, name) < 1]
        if self.max_tiles < self.min_tiles:
            problems.append(f"max_tiles ({self.max_tiles}) must be >= min_tiles ({self.min_tiles})")
        if self.max_tiles_per_pack is not None and self.max_tiles_per_pack < 1:
            problems.append(f"max_tiles_per_pack must be >= 1 or null, got {self.max_tiles_per_pack}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def tiling(self) -> Tiling:
        return Tiling(min_tiles=self.min_tiles, max_tiles=self.max_tiles, image_size=self.image_size,
                      use_thumbnail=self.use_thumbnail, tokens_per_tile=self.tokens_per_tile)


@dataclass
class SourceReport:
    """Per-source counts: ``selected`` (after mixing) = ``packed`` + dropped; rejects precede mixing."""

    path: str
    kind: str
    weight: float
    valid_rows: int = 0
    selected: int = 0
    packed: int = 0
    tokens: int = 0
    rejects_by_reason: Counter = field(default_factory=Counter)
    dropped_by_reason: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rejects_by_reason"] = dict(sorted(self.rejects_by_reason.items()))
        out["dropped_by_reason"] = dict(sorted(self.dropped_by_reason.items()))
        return out


# ---- reading and mixing -------------------------------------------------------------------------


def read_source(source: PackSource) -> tuple[list[SampleRecord], list[dict[str, Any]]]:
    """The usable sample records of one source file and a reject record (stage ``input``) per bad row."""
    path = Path(source.path)
    require = () if source.kind in KINDS_WITHOUT_IMAGE else ("image",)
    inputs = read_inputs(path, require=require, extra_columns=SAMPLE_COLUMNS)
    records, rejects = [], list(inputs.rejects)
    for row in inputs.rows:
        try:
            records.append(_sample_record(row, source.kind))
        except RenderRejected as rejected:
            detail = f"{path.name}: {rejected.detail}"
            rejects.append(reject_record(row.id, INPUT_STAGE, rejected.reason, detail))
    return records, [{**reject, "source": source.path} for reject in rejects]


def _sample_record(row: InputRow, kind: str) -> SampleRecord:
    response = row.extra.get("response")
    if not isinstance(response, str) or not response.strip():
        raise RenderRejected(EMPTY_RESPONSE, f"response is {response!r}")
    weight = row.extra.get("weight")
    weight = 1.0 if weight is None else weight
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight < math.inf:
        raise RenderRejected(BAD_WEIGHT, f"reward weight is {weight!r}; it must be a finite number >= 0")
    check_text(row.question, response, num_images=0 if row.image is None else 1)
    label = f"{kind}/{row.source}" if row.source else kind
    return SampleRecord(row=row, response=response, weight=float(weight), label=label)


def mix_indices(num_rows: int, weight: float, seed: int, key: str) -> np.ndarray:
    """Rows a mixing ``weight`` takes, ascending: ``floor(weight)`` copies of all, plus a seeded sample.

    The sample is ``round(frac(weight) * num_rows)`` distinct rows, drawn by an RNG seeded with
    ``seed`` and ``key`` (the source path), so a source's selection does not change when other
    sources are added to the mix.
    """
    whole = math.floor(weight)
    extra = math.floor((weight - whole) * num_rows + 0.5)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    sampled = rng.choice(num_rows, size=extra, replace=False) if extra else np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate([np.tile(np.arange(num_rows), whole), sampled]), kind="stable")


def collect_samples(config: PackConfig, renderer: ChatRenderer
                    ) -> tuple[list[Sample], list[dict[str, Any]], list[SourceReport]]:
    """Read, mix and tokenise every source: (samples, excluded records, per-source reports).

    Excluded so far: rejected rows (stage ``input``), selected zero-weight samples (``zero_weight``)
    and samples that cannot be split into prompt and response tokens (``response_merges_with_prompt``).
    A row selected several times is tokenised once.
    """
    samples: list[Sample] = []
    excluded: list[dict[str, Any]] = []
    reports: list[SourceReport] = []
    for index, source in enumerate(config.sources):
        records, rejects = read_source(source)
        chosen = mix_indices(len(records), source.weight, config.seed, source.path).tolist()
        report = SourceReport(path=source.path, kind=source.kind, weight=source.weight,
                              valid_rows=len(records), selected=len(chosen),
                              rejects_by_reason=Counter(r["reason"] for r in rejects))
        excluded += rejects
        tokenized: dict[int, TokenizedSample] = {}
        failed: dict[int, RenderRejected] = {}
        for row_index in progress(chosen, desc=f"tokenise {Path(source.path).name}", unit="sample"):
            record = records[row_index]
            if record.weight == 0:
                excluded.append(_dropped(record, source, ZERO_WEIGHT, "reward weight 0"))
                report.dropped_by_reason[ZERO_WEIGHT] += 1
                continue
            if row_index not in tokenized and row_index not in failed:
                try:
                    plans = tuple(renderer.tiling.plan(image) for image in record.images)
                    tokenized[row_index] = renderer.tokenize(record.row.question, record.response, plans)
                except RenderRejected as rejected:
                    failed[row_index] = rejected
            if row_index in failed:  # every selected copy is counted, so selected = packed + dropped
                excluded.append(_dropped(record, source, failed[row_index].reason, failed[row_index].detail))
                report.dropped_by_reason[failed[row_index].reason] += 1
                continue
            samples.append(Sample(record, tokenized[row_index], index))
        reports.append(report)
    return samples, excluded, reports


def _dropped(record: SampleRecord, source: PackSource, reason: str, detail: str) -> dict[str, Any]:
    return {**reject_record(record.row.id, PACK_STAGE, reason, detail), "source": source.path}


# ---- the build ----------------------------------------------------------------------------------


def pack_dataset(config: PackConfig, *, force: bool = False, config_file: Path | None = None) -> Manifest:
    """Build the packed dataset ``config`` describes at ``config.out``; returns its manifest."""
    for key, value, hint in (
        ("tokenizer_dir", config.tokenizer_dir, "give the policy's tokenizer (or checkpoint) dir"),
        ("sources", config.sources, "list sources in the recipe or pass --in FILE"),
        ("out", config.out, "give the output directory (pack.out=DIR or --out DIR)"),
    ):
        if not value:
            raise ConfigError(f"pack.{key} is not set: {hint}")
    out = Path(config.out)
    check_replaceable(out, force)
    try:
        tokenizer = load_tokenizer(config.tokenizer_dir)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load tokenizer from {config.tokenizer_dir}: {exc}") from exc
    prompt_files = _prompt_paths(config)
    renderer = ChatRenderer(tokenizer, SystemPrompts.from_files(*prompt_files), config.tiling)

    samples, excluded, reports = collect_samples(config, renderer)
    truncated = _truncate_oversize(samples, config.max_seq_len) if config.oversize == "truncate" else set()
    plan = plan_packs(np.array([len(s.tokens) for s in samples], dtype=np.int64),
                      np.array([s.tokens.num_tiles for s in samples], dtype=np.int64),
                      max_tokens=config.max_seq_len, max_tiles=config.max_tiles_per_pack)
    excluded += _plan_drops(samples, plan, config, reports)
    if plan.num_packs == 0:
        counts = dict(Counter(record["reason"] for record in excluded))
        raise UserError(f"nothing to pack: every sample was rejected or dropped ({counts}); "
                        f"no dataset written")

    if excluded:
        log.warning("%d row(s) or sample(s) left out (all listed in %s/%s):\n%s", len(excluded), out, REJECTS_NAME,
                    "\n".join(reject_summary(excluded)))
    stats = _stats(samples, plan, excluded, reports, truncated - set(plan.dropped.tolist()))
    manifest = Manifest(schema_version=SCHEMA_VERSION, tokenizer_fingerprint=tokenizer.fingerprint(),
                        max_seq_len=config.max_seq_len, max_tiles_per_pack=config.max_tiles_per_pack,
                        tokens_per_tile=config.tokens_per_tile, image_size=config.image_size,
                        packs=plan.num_packs, packs_per_shard=config.packs_per_shard, shards=[],
                        stats=stats, provenance=_provenance(config, prompt_files, config_file))
    write_dataset(out, manifest, plan, samples, excluded, force=force)
    return manifest


def _prompt_paths(config: PackConfig) -> tuple[Path, Path]:
    """(default, slow-thinking) prompt files, resolved as ``rollout.prompts`` resolves every prompt file."""
    return resolve_prompt_path(config.default_system_prompt), resolve_prompt_path(config.slow_thinking_prompt)


def _truncate_oversize(samples: list[Sample], max_len: int) -> set[int]:
    """Cut too-long samples to ``max_len`` in place; returns their indices (uncuttable ones stay long)."""
    cut = set()
    for i, sample in enumerate(samples):
        if len(sample.tokens) > max_len and (short := sample.tokens.truncated(max_len)) is not None:
            samples[i] = replace(sample, tokens=short)
            cut.add(i)
    return cut


def _plan_drops(samples: list[Sample], plan: PackPlan, config: PackConfig,
                reports: list[SourceReport]) -> list[dict[str, Any]]:
    """One record per sample the plan left out (too many tokens or tiles), counted in its source's report."""
    drops = []
    for index, reason in zip(plan.dropped.tolist(), plan.dropped_reason.tolist()):
        sample = samples[index]
        if reason == TOO_MANY_TOKENS:
            detail = f"{len(sample.tokens)} tokens > max_seq_len {config.max_seq_len}"
        else:
            detail = f"{sample.tokens.num_tiles} tiles > max_tiles_per_pack {config.max_tiles_per_pack}"
        drops.append(_dropped(sample.record, config.sources[sample.source], reason, detail))
        reports[sample.source].dropped_by_reason[reason] += 1
    return drops


def _stats(samples: list[Sample], plan: PackPlan, excluded: list[dict[str, Any]],
           reports: list[SourceReport], truncated: set[int]) -> dict[str, Any]:
    packed = [samples[index] for index in plan.sample_order.tolist()]
    for sample in packed:
        reports[sample.source].packed += 1
        reports[sample.source].tokens += len(sample.tokens)
    by_stage = {stage: Counter(r["reason"] for r in excluded if r["stage"] == stage)
                for stage in (INPUT_STAGE, PACK_STAGE)}
    return {
        "samples_in": sum(report.selected for report in reports),
        "samples_packed": len(packed),
        "tokens": plan.packed_tokens,
        "target_tokens": sum(s.tokens.target_end - s.tokens.target_start for s in packed),
        "images": sum(len(s.tokens.tile_plans) for s in packed),
        "tiles": int(plan.pack_tiles.sum()),
        "packs": plan.num_packs,
        "efficiency": round(plan.efficiency, 6),
        "samples_per_pack_mean": round(len(packed) / plan.num_packs, 4),
        "pack_tokens_max": int(plan.pack_tokens.max()),
        "pack_tokens_min": int(plan.pack_tokens.min()),
        "truncated": len(truncated),
        "dropped_by_reason": dict(sorted(by_stage[PACK_STAGE].items())),
        "rejects_by_reason": dict(sorted(by_stage[INPUT_STAGE].items())),
        "sources": [report.as_dict() for report in reports],
    }


def _provenance(config: PackConfig, prompt_files: tuple[Path, Path],
                config_file: Path | None) -> dict[str, Any]:
    def absolute(path: str | Path | None) -> str | None:
        return None if path is None else str(Path(path).absolute())

    return {
        "sources": [{"path": absolute(s.path), "weight": s.weight, "kind": s.kind} for s in config.sources],
        "config_file": absolute(config_file),
        "rollout_store": absolute(config.rollout_store),
        "tokenizer_dir": absolute(config.tokenizer_dir),
        "system_prompts": {"default": absolute(prompt_files[0]), "slow_thinking": absolute(prompt_files[1])},
        "pack_config": to_dict(config),
        "rejects_file": REJECTS_NAME,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# ---- command line -------------------------------------------------------------------------------


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sophia-rollout pack", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Tokenise sample records (selected trajectories, text and VQA sources of the recipe's "
                    "pack: section) and pack them into a length-sorted dataset for training.",
        epilog=OVERRIDES_HELP.format(example="pack.max_seq_len=8192 'pack.sources=[{path: a.jsonl}]'"))
    parser.add_argument("--config", required=True, type=Path, help="recipe YAML with a pack: section (required)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="recipe overrides, e.g. pack.max_seq_len=8192")
    parser.add_argument("--in", dest="inputs", action="append", default=[], metavar="FILE",
                        help="an extra trajectories source (weight 1); repeatable")
    parser.add_argument("--out", help="output directory (overrides pack.out)")
    parser.add_argument("--force", action="store_true", help="replace an existing packed dataset at OUT")
    return parser.parse_intermixed_args(argv)


def pack_main(argv: list[str]) -> int:
    args = _parse_args(argv)
    raw = read_recipe(args.config, args.overrides)
    config = build(PackConfig, raw.get("pack") or {}, "pack")
    config.sources = list(config.sources) + [PackSource(path=path, weight=1.0, kind="trajectories")
                                             for path in args.inputs]
    if args.out:
        config.out = args.out
    manifest = pack_dataset(config, force=args.force, config_file=args.config)
    stats = manifest.stats
    log.info("packed %d of %d samples (%d tokens) into %d packs in %d shard(s) at %s; efficiency %.4f; "
             "dropped %s; rejected %s; truncated %d", stats["samples_packed"], stats["samples_in"],
             stats["tokens"], manifest.packs, len(manifest.shards), config.out, stats["efficiency"],
             stats["dropped_by_reason"], stats["rejects_by_reason"], stats["truncated"])
    print(json.dumps({"out": str(config.out), "packs": manifest.packs, **{k: stats[k] for k in (
        "samples_in", "samples_packed", "tokens", "efficiency", "dropped_by_reason", "rejects_by_reason")}}))
    return 0

