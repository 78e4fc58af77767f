"""The four rollout stages over the resumable store: caption -> reason -> score -> select (docs/ALGORITHM.md §1.1).

Each stage reads what earlier stages stored, works out which keys are neither stored nor rejected
yet, and processes them in batches of ``rollout.batch_size`` requests, writing one shard per batch
(``rollout.store``), so a killed stage loses at most one batch and a rerun recomputes nothing:

* ``caption_stage`` — one request per image with ``n = K`` (the image is encoded once per request);
  table ``captions`` keyed (id, k): text, num_tokens, finish_reason.
* ``reason_stage`` — one request per caption with ``n = N``, routed by the input's ``difficulty`` to
  the ``hard`` reasoner when one is configured, else the ``easy`` one; engines are started one
  after the other, never together. Table ``trajectories`` keyed (id, k, n): text, num_tokens,
  finish_reason (``length`` = cut at max_tokens), route.
* ``score_stage`` — Eq. 4 through ``VerifierPool`` (the code path of ``sophia-rollout check``),
  a truncated trajectory scores 0 with reason ``truncated``; with ``rollout.verifier.judge`` on, rule
  negatives the rules could have missed are re-judged by a served model (reason ``judge`` when it
  overturns them; verdicts cached in ``STORE/judge_verdicts.jsonl``; ``judge_*`` counts in the
  report); Eq. 5 per caption (the per-batch work: ``rollout.scoring``). Table ``scores`` keyed
  (id, k, n): correct, extracted, reason, truncated, caption_reward, num_tokens.
* ``select_stage`` — Eq. 6 or an ablation (``rollout.rewards``) per question. Table ``selected``
  keyed (id, k, n) holds the sample records the packer needs; table ``decisions`` keyed (id) records
  that a question was decided (also when nothing was selected) and under which settings.

A bad sample never stops a stage: an unreadable image, an engine error on a request or an empty
caption becomes a row of the rejects table with its reason (stage ``caption`` keyed (id, k),
``reason`` keyed (id, k, n)); input rows that cannot be used are rejected by ``read_inputs``.
A failure of a whole engine call is retried request by request, so one bad request cannot take
its batch down with it. Truncated captions are kept (flagged ``finish_reason = length``) and
reasoned on: their caption reward decides whether they are worth anything. A rerun retries
transient failures (engine errors, timeouts) and examines again rows rejected before whose input
row has changed since (rejects are keyed by the input row's content hash).

Provenance (``rollout.provenance``): every stage checks that the tables it reads and writes were
made by this run's models and settings (weights fingerprint, prompts, sampling, K, N, the
verification and selection settings, the upstream table) and refuses, naming what changed, when
they were not; a stage whose input table was never written (``reason`` before ``caption``) is an
error that says which stage to run first.

Unfinished thinking: a trajectory that opens a ``<think>`` block, itself or through the reasoner's
chat template (QwQ, DeepSeek-R1), and never closes it scores 0 with reason ``unfinished_think``
(``rollout.verifier.unfinished_think: zero``, the default; ``score`` verifies it as it is).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from rollout.engine_api import (
    ENGINE_ERROR,
    Completion,
    Engine,
    EngineConfig,
    Failure,
    Request,
    SamplingParams,
)
from rollout.inputs import InputRow, Inputs
from rollout.prompts import Prompts, as_thinking_response, chat_template_opens_think
from rollout.provenance import (
    caption_provenance,
    mismatch_hint,
    reason_provenance,
    score_provenance,
    select_provenance,
)
from rollout.rewards import ScoredTrajectory, SelectionSettings, select_for_question
from rollout.scoring import ThinkRule, judge_config, score_captions
from rollout.sharding import Shard
from rollout.store import Store, Table, reject_record
from sophia_common.cli import UserError
from sophia_common.log import get_logger

if TYPE_CHECKING:
    from rollout.config import RolloutConfig

CAPTION, REASON, SCORE, SELECT = "caption", "reason", "score", "select"
CAPTIONS, TRAJECTORIES, SCORES, SELECTED, DECISIONS = "captions", "trajectories", "scores", "selected", "decisions"
TRAJECTORY_KEYS = ("id", "k", "n")
EMPTY_CAPTION = "empty_caption"
UNFINISHED_THINK = "unfinished_think"

SCHEMAS: dict[str, pa.Schema] = {
    CAPTIONS: pa.schema([("id", pa.string()), ("k", pa.int64()), ("text", pa.string()),
                         ("num_tokens", pa.int64()), ("finish_reason", pa.string())]),
    TRAJECTORIES: pa.schema([("id", pa.string()), ("k", pa.int64()), ("n", pa.int64()), ("text", pa.string()),
                             ("num_tokens", pa.int64()), ("finish_reason", pa.string()), ("route", pa.string())]),
    SCORES: pa.schema([("id", pa.string()), ("k", pa.int64()), ("n", pa.int64()), ("correct", pa.bool_()),
                       ("extracted", pa.string()), ("reason", pa.string()), ("truncated", pa.bool_()),
                       ("caption_reward", pa.float64()), ("num_tokens", pa.int64())]),
    SELECTED: pa.schema([("id", pa.string()), ("k", pa.int64()), ("n", pa.int64()), ("image", pa.binary()),
                         ("image_path", pa.string()), ("question", pa.string()), ("answer", pa.string()),
                         ("source", pa.string()), ("response", pa.string()), ("weight", pa.float64()),
                         ("caption_reward", pa.float64()), ("num_tokens", pa.int64())]),
    DECISIONS: pa.schema([("id", pa.string()), ("trajectories", pa.int64()), ("correct", pa.int64()),
                          ("eligible", pa.int64()), ("selected", pa.int64()), ("alpha", pa.float64()),
                          ("keep_k", pa.int64()), ("ablation", pa.string()), ("seed", pa.int64())]),
}
"""Column types of the stage tables, fixed so that a shard whose optional column is all null (no
answer extracted in a whole batch) still has the type of the shards before and after it."""
KEY_COLUMNS_OF = {CAPTIONS: ("id", "k"), TRAJECTORIES: TRAJECTORY_KEYS, SCORES: TRAJECTORY_KEYS,
                  SELECTED: TRAJECTORY_KEYS, DECISIONS: ("id",)}

EngineFactory = Callable[..., Engine]
T = TypeVar("T")
log = get_logger("sophia.rollout.stages")


@dataclass
class RolloutRun:
    """Everything a stage needs: the settings, the prompts, the store, this task's shard, the inputs."""

    config: RolloutConfig
    prompts: Prompts
    store: Store
    shard: Shard
    inputs: Inputs
    engine_factory: EngineFactory

    def rows_by_id(self) -> dict[str, InputRow]:
        return {row.id: row for row in self.inputs.rows}

    def input_hashes(self) -> dict[str, str]:
        return self.inputs.content_hashes()

    def expected_provenance(self, table: str) -> dict[str, Any]:
        """What ``table``'s record must say for this run (upstream tables as recorded in the store)."""
        config, recorded = self.config, lambda name: self.store.table(name, KEY_COLUMNS_OF[name]).provenance
        if table == CAPTIONS:
            return caption_provenance(config, self.prompts.caption)
        if table == TRAJECTORIES:
            return reason_provenance(config, self.prompts.simulated_seeing, recorded(CAPTIONS))
        if table == SCORES:
            from rollout.verifier.judge import judge_identity

            return score_provenance(config, recorded(TRAJECTORIES), judge_identity(judge_config(config)))
        return select_provenance(config, recorded(SCORES))

    def checked_table(self, table: str, *, write: bool) -> Table:
        """``table``, after checking its provenance against this run's (recorded first when ``write``)."""
        return self.store.check_provenance(table, self.expected_provenance(table), record=write,
                                           key_columns=KEY_COLUMNS_OF[table],
                                           hint=mismatch_hint(self.config.store_dir))

    def input_table(self, table: str, producer: str, counts: Sequence[str] = ()) -> Table:
        """The table a stage reads: an error saying to run ``producer`` first when it never ran here.

        Its settings were checked by the stage that wrote it, and the reading stage's own table records
        its digest; here only the ``counts`` the reader relies on ("K" captions per image, "N"
        trajectories per caption) must agree with what the store was made with.
        """
        stored = self.store.table(table, KEY_COLUMNS_OF[table])
        if stored.provenance is None and not stored.shard_paths() and self.inputs.rows:
            raise UserError(f"no {table} in {self.store.root}: the {producer} stage has not run on this store "
                            f"yet. Run `sophia-rollout {producer} --config RECIPE` (or `sophia-rollout run`, "
                            f"which runs every stage in order) first")
        for upstream, name, wanted in ((CAPTIONS, "K", self.config.captioner.K), (TRAJECTORIES, "N", self.config.N)):
            if name not in counts:
                continue
            recorded = (self.store.table(upstream, KEY_COLUMNS_OF[upstream]).provenance or {}).get(name, wanted)
            if recorded != wanted:
                raise UserError(f"table {upstream!r} in {self.store.root} was made with {name}: recorded "
                                f"{recorded}, now {wanted}; set {name} back to {recorded}, or: "
                                + mismatch_hint(self.config.store_dir))
        return stored


@dataclass
class StageReport:
    stage: str
    wanted: int = 0
    already_done: int = 0
    written: int = 0
    rejected: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        report = asdict(self)
        report.update(report.pop("extra"))
        report["seconds"] = round(self.seconds, 2)
        return report


def as_arrow(rows: list[dict[str, Any]], table: str) -> pa.Table:
    """Rows of a stage table with the table's fixed column types."""
    return pa.Table.from_pylist(rows, schema=SCHEMAS[table])


def read_rows(store: Store, table: str, columns: list[str]) -> list[dict[str, Any]]:
    """Some columns of a stage table as dicts; [] while the table has no shard yet."""
    stored = store.table(table, KEY_COLUMNS_OF[table])
    return stored.read(columns).to_pylist() if stored.shard_paths() else []


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def generate_robustly(engine: Engine, requests: list[Request],
                      params: SamplingParams) -> list[list[Completion] | Failure]:
    """``engine.generate``; if the whole call fails, each request alone, so only bad ones fail."""
    try:
        results = engine.generate(requests, params)
    except UserError:
        raise
    except Exception as exc:  # an engine error on one request must not sink the batch or the run
        if engine.is_fatal(exc):
            raise
        if len(requests) == 1:
            return [Failure(ENGINE_ERROR, f"{type(exc).__name__}: {exc}"[:2000])]
        log.warning("%s engine failed on a batch of %d (%s: %s); retrying one by one", engine.name,
                    len(requests), type(exc).__name__, exc)
        results = [generate_robustly(engine, [request], params)[0] for request in requests]
        if all(isinstance(result, Failure) and result.reason == ENGINE_ERROR for result in results):
            raise RuntimeError(f"the {engine.name} engine failed on every request of a batch of "
                               f"{len(requests)}, alone and together; stopping rather than rejecting them "
                               f"all (first error: {exc})") from exc
    return [result if isinstance(result, Failure) or len(result) == params.n else
            Failure(ENGINE_ERROR, f"engine returned {len(result)} completions, asked for {params.n}")
            for result in results]


def generate_with_counts(engine: Engine, requests: list[Request], counts: list[int],
                         config: EngineConfig) -> list[list[Completion] | Failure]:
    """Requests that want different ``n`` (a resumed item misses only some samples), grouped by n."""
    results: list[list[Completion] | Failure | None] = [None] * len(requests)
    positions: dict[int, list[int]] = defaultdict(list)
    for position, count in enumerate(counts):
        positions[count].append(position)
    for count, group in positions.items():
        outputs = generate_robustly(engine, [requests[p] for p in group], SamplingParams.of(config, count))
        for position, output in zip(group, outputs, strict=True):
            results[position] = output
    return results  # type: ignore[return-value]


def _log_progress(stage: str, done: int, total: int, started: float) -> None:
    elapsed = time.perf_counter() - started
    log.info("%s: %d/%d requests (%.1f s, %.2f requests/s)", stage, done, total, elapsed, done / max(elapsed, 1e-9))


# ---------------------------------------------------------------- caption


def caption_stage(run: RolloutRun) -> StageReport:
    """K captions per image by the policy InternVL, the question never shown."""
    started, config = time.perf_counter(), run.config.captioner
    captions = run.checked_table(CAPTIONS, write=True)
    run.store.write_rejects(run.inputs.rejects, skip_existing=True)
    done = captions.existing_keys() | run.store.rejected_keys(CAPTION, ("id", "k"), run.input_hashes())
    todo = [(row, [k for k in range(config.K) if (row.id, k) not in done]) for row in run.inputs.rows]
    todo = [(row, missing) for row, missing in todo if missing]
    report = StageReport(CAPTION, wanted=len(run.inputs.rows) * config.K)
    report.already_done = report.wanted - sum(len(missing) for _, missing in todo)
    if todo:
        with run.engine_factory(config, "captioner", vision=True, max_tiles=config.max_tiles) as engine:
            for finished, batch in enumerate(chunks(todo, run.config.batch_size)):
                requests = [Request(run.prompts.caption_messages(), key=f"caption:{row.id}:{missing}",
                                    image=row.image) for row, missing in batch]
                outputs = generate_with_counts(engine, requests, [len(m) for _, m in batch], config)
                rows, rejects = _caption_records(batch, outputs)
                captions.write(as_arrow(rows, CAPTIONS))
                run.store.write_rejects(rejects, skip_existing=True)
                report.written, report.rejected = report.written + len(rows), report.rejected + len(rejects)
                _log_progress(CAPTION, min((finished + 1) * run.config.batch_size, len(todo)), len(todo), started)
    report.seconds = time.perf_counter() - started
    return report


def _caption_records(batch: Sequence[tuple[InputRow, list[int]]],
                     outputs: list[list[Completion] | Failure]) -> tuple[list[dict], list[dict]]:
    rows, rejects = [], []
    for (row, missing), output in zip(batch, outputs, strict=True):
        if isinstance(output, Failure):
            rejects += [reject_record(row.id, CAPTION, output.reason, output.detail, k=k,
                                      input_hash=row.content_hash) for k in missing]
            continue
        rows += [{"id": row.id, "k": k, "text": completion.text, "num_tokens": completion.num_tokens,
                  "finish_reason": completion.finish_reason} for k, completion in zip(missing, output, strict=True)]
    return rows, rejects


# ---------------------------------------------------------------- reason


@dataclass(frozen=True)
class _CaptionWork:
    row: InputRow
    k: int
    caption: str
    missing: list[int]


def reason_stage(run: RolloutRun) -> StageReport:
    """N trajectories per caption by the reasoning LLM(s), from the simulated-seeing prompt."""
    started, rows_by_id = time.perf_counter(), run.rows_by_id()
    run.input_table(CAPTIONS, CAPTION)
    trajectories = run.checked_table(TRAJECTORIES, write=True)
    done = trajectories.existing_keys() | run.store.rejected_keys(REASON, TRAJECTORY_KEYS, run.input_hashes())
    captions = read_rows(run.store, CAPTIONS, ["id", "k", "text"])
    captions = sorted((c for c in captions if c["id"] in rows_by_id), key=lambda c: (c["id"], c["k"]))
    work = [_CaptionWork(rows_by_id[c["id"]], c["k"], c["text"],
                         [n for n in range(run.config.N) if (c["id"], c["k"], n) not in done]) for c in captions]
    report = StageReport(REASON, wanted=len(captions) * run.config.N)
    report.already_done = report.wanted - sum(len(item.missing) for item in work)
    work = [item for item in work if item.missing]
    empty = [item for item in work if not item.caption.strip()]
    if empty:
        rejects = [reject_record(item.row.id, REASON, EMPTY_CAPTION, "the caption is empty", k=item.k, n=n,
                                 input_hash=item.row.content_hash) for item in empty for n in item.missing]
        run.store.write_rejects(rejects, skip_existing=True)
        report.rejected += len(rejects)
    for route, config in _routes(run):
        routed = [item for item in work if item.caption.strip() and _route_of(run, item.row) == route]
        if routed:
            with run.engine_factory(config, f"reasoner.{route}", vision=False) as engine:
                _reason_with(run, engine, config, route, routed, report)
    report.seconds = time.perf_counter() - started
    return report


def _routes(run: RolloutRun) -> list[tuple[str, EngineConfig]]:
    reasoner = run.config.reasoner
    return [("easy", reasoner.easy)] + ([("hard", reasoner.hard)] if reasoner.hard is not None else [])


def _route_of(run: RolloutRun, row: InputRow) -> str:
    reasoner = run.config.reasoner
    return "hard" if reasoner.hard is not None and row.difficulty in reasoner.hard_difficulties else "easy"


def _reason_with(run: RolloutRun, engine: Engine, config: EngineConfig, route: str,
                 work: list[_CaptionWork], report: StageReport) -> None:
    started, table = time.perf_counter(), run.store.table(TRAJECTORIES)
    for finished, batch in enumerate(chunks(work, run.config.batch_size)):
        requests = [Request(run.prompts.reasoning_messages(item.row.question, item.caption),
                            key=f"reason:{item.row.id}:{item.k}:{item.missing}") for item in batch]
        outputs = generate_with_counts(engine, requests, [len(item.missing) for item in batch], config)
        rows, rejects = [], []
        for item, output in zip(batch, outputs, strict=True):
            if isinstance(output, Failure):
                rejects += [reject_record(item.row.id, REASON, output.reason, output.detail, k=item.k, n=n,
                                          input_hash=item.row.content_hash) for n in item.missing]
                continue
            rows += [{"id": item.row.id, "k": item.k, "n": n, "text": completion.text,
                      "num_tokens": completion.num_tokens, "finish_reason": completion.finish_reason,
                      "route": route} for n, completion in zip(item.missing, output, strict=True)]
        table.write(as_arrow(rows, TRAJECTORIES))
        run.store.write_rejects(rejects, skip_existing=True)
        report.written, report.rejected = report.written + len(rows), report.rejected + len(rejects)
        _log_progress(f"{REASON}.{route}", min((finished + 1) * run.config.batch_size, len(work)), len(work),
                      started)


# ---------------------------------------------------------------- score


def score_stage(run: RolloutRun) -> StageReport:
    """Outcome rewards (Eq. 4) of every trajectory and the reward of its caption (Eq. 5)."""
    from rollout.verifier import VerifierPool
    from rollout.verifier.judge import open_judge

    started, rows_by_id = time.perf_counter(), run.rows_by_id()
    run.input_table(TRAJECTORIES, REASON)
    scores = run.checked_table(SCORES, write=True)
    scored = scores.existing_keys()
    columns = ["id", "k", "n", "text", "num_tokens", "finish_reason", "route"]
    by_caption: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for trajectory in read_rows(run.store, TRAJECTORIES, columns):
        if trajectory["id"] in rows_by_id:
            by_caption[(trajectory["id"], trajectory["k"])].append(trajectory)
    report = StageReport(SCORE, wanted=sum(map(len, by_caption.values())))
    pending = sorted(caption for caption, group in by_caption.items()
                     if any((t["id"], t["k"], t["n"]) not in scored for t in group))
    report.already_done = report.wanted - sum(len(by_caption[caption]) for caption in pending)
    if pending:
        verifier = run.config.verifier
        opens_think = {route: config is not None and chat_template_opens_think(config.model)
                       for route, config in _routes(run)}
        judge = open_judge(judge_config(run.config), run.store.root)
        with VerifierPool(workers=verifier.workers, timeout_s=verifier.timeout_s) as pool:
            for batch in chunks(pending, run.config.batch_size):
                rows = score_captions([by_caption[caption] for caption in batch], rows_by_id, pool,
                                      ThinkRule(verifier.unfinished_think, opens_think), judge)
                rows = [row for row in rows if (row["id"], row["k"], row["n"]) not in scored]
                scores.write(as_arrow(rows, SCORES))
                report.written += len(rows)
        if judge is not None:
            report.extra.update(judge.report())
    report.seconds = time.perf_counter() - started
    return report


# ---------------------------------------------------------------- select


def selection_settings(config: RolloutConfig) -> SelectionSettings:
    return SelectionSettings(alpha=config.alpha, keep_k=config.keep_k, ablation=config.ablation, seed=config.seed)


def select_stage(run: RolloutRun) -> StageReport:
    """Eq. 6 per question: weight 1 for the Keep-k shortest correct trajectories of good captions."""
    started, rows_by_id, settings = time.perf_counter(), run.rows_by_id(), selection_settings(run.config)
    run.input_table(SCORES, SCORE, counts=("K", "N"))
    decisions = run.checked_table(DECISIONS, write=True)
    selected = run.checked_table(SELECTED, write=True)
    by_question: dict[str, list[ScoredTrajectory]] = defaultdict(list)
    columns = ["id", "k", "n", "correct", "caption_reward", "num_tokens", "truncated", "reason"]
    for score in read_rows(run.store, SCORES, columns):
        if score["id"] in rows_by_id:
            unfinished = score.pop("reason") == UNFINISHED_THINK
            by_question[score["id"]].append(ScoredTrajectory(**score, unfinished=unfinished))
    decided = {key[0] for key in decisions.existing_keys()}
    undecided = [item_id for item_id in rows_by_id if item_id in by_question and item_id not in decided]
    complete = _complete_questions(run, by_question)
    pending = [item_id for item_id in undecided if item_id in complete]
    report = StageReport(SELECT, wanted=len(by_question), already_done=len(by_question) - len(undecided))
    report.extra["questions_incomplete"] = len(undecided) - len(pending)
    if len(pending) < len(undecided):
        log.warning("select: %d question(s) still wait for captions, trajectories or scores; they are "
                    "decided by a later select", len(undecided) - len(pending))
    texts = _trajectory_texts(run.store, set(pending))
    for batch in chunks(pending, run.config.batch_size):
        sample_rows, decision_rows = [], []
        for item_id in batch:
            chosen = select_for_question(by_question[item_id], settings)
            sample_rows += [_sample_record(rows_by_id[item_id], choice, texts[choice.key]) for choice in chosen]
            decision_rows.append(_decision_record(item_id, by_question[item_id], chosen, settings))
        selected.write(as_arrow(sample_rows, SELECTED), skip_existing=True)  # replays a crash between writes
        decisions.write(as_arrow(decision_rows, DECISIONS))
        report.written += len(sample_rows)
    report.extra["questions_decided"] = len(pending)
    report.seconds = time.perf_counter() - started
    return report


def _complete_questions(run: RolloutRun, by_question: dict[str, list[ScoredTrajectory]]) -> set[str]:
    """Questions whose K captions are stored or rejected, and each stored one's N trajectories scored
    or rejected. Selecting a question earlier would decide it, for good, on part of its trajectories."""
    stored: dict[str, set[int]] = defaultdict(set)
    for item_id, k in run.store.table(CAPTIONS).existing_keys():
        stored[item_id].add(k)
    rejected: dict[str, set[int]] = defaultdict(set)
    hashes = run.input_hashes()
    for item_id, k in run.store.rejected_keys(CAPTION, ("id", "k"), hashes):
        rejected[item_id].add(k)
    settled = run.store.rejected_keys(REASON, TRAJECTORY_KEYS, hashes) | {t.key for group in by_question.values()
                                                                   for t in group}
    all_captions, all_samples = set(range(run.config.captioner.K)), range(run.config.N)
    return {item_id for item_id in by_question
            if all_captions <= stored[item_id] | rejected[item_id]
            and all((item_id, k, n) in settled for k in stored[item_id] for n in all_samples)}


def _trajectory_texts(store: Store, ids: set[str]) -> dict[tuple[str, int, int], str]:
    if not ids:
        return {}
    rows = read_rows(store, TRAJECTORIES, ["id", "k", "n", "text"])
    return {(row["id"], row["k"], row["n"]): row["text"] for row in rows if row["id"] in ids}


def _sample_record(row: InputRow, choice: ScoredTrajectory, text: str) -> dict[str, Any]:
    """A sample record for the packer: the original image and question with the selected trajectory."""
    return {"id": row.id, "k": choice.k, "n": choice.n,
            "image": row.image if isinstance(row.image, bytes) else None,
            "image_path": None if row.image is None or isinstance(row.image, bytes) else str(row.image),
            "question": row.question, "answer": row.answer, "source": row.source,
            "response": as_thinking_response(text), "weight": 1.0,
            "caption_reward": choice.caption_reward, "num_tokens": choice.num_tokens}


def _decision_record(item_id: str, trajectories: list[ScoredTrajectory], chosen: list[ScoredTrajectory],
                     settings: SelectionSettings) -> dict[str, Any]:
    from rollout.rewards import is_eligible

    return {"id": item_id, "trajectories": len(trajectories),
            "correct": sum(t.correct for t in trajectories),
            "eligible": sum(is_eligible(t, settings) for t in trajectories), "selected": len(chosen),
            "alpha": settings.alpha, "keep_k": settings.keep_k, "ablation": settings.ablation,
            "seed": settings.seed}

