"""Results files of an evaluation and the comparison of two evaluations.

* ``summarize_benchmark`` — one benchmark directory's ``records.jsonl`` (every question x sample:
  question, gold answers, response, extracted answer, verdict, reason, tokens, finish reason,
  scoring method) and ``benchmark.json`` (n, pass@1 ± s.e., pass@K, mean response length,
  truncation rate, missing and failed counts; the same per category; the protocol used).
* ``write_results(out_dir)`` — ``results.json``, ``results.md`` and ``results.png`` (pass@1 per
  benchmark with its standard error) over every ``*/benchmark.json`` under ``out_dir``; the
  average over benchmarks is the paper's "Average" column.
* ``compare(dir_a, dir_b, out)`` — per benchmark, the pass@1 of each run and the paired bootstrap
  delta (B - A) with its 95 % interval over the questions both runs answered; ``compare.json``,
  ``compare.md`` and ``compare.png``.

All files are written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluation.metrics import by_category, paired_bootstrap, per_question, summarize
from evaluation.tables import RESPONSE_KEYS, RESPONSES, SCORE_KEYS, SCORES, Plan, read_table
from sophia_common.atomic import atomic_path, write_text_atomic
from sophia_common.cli import UserError

if TYPE_CHECKING:
    from evaluation.config import EvalConfig
    from evaluation.scoring import Scorer

RECORDS, BENCHMARK_JSON = "records.jsonl", "benchmark.json"


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _records(plan: Plan, scorer: Scorer) -> list[dict[str, Any]]:
    responses = {(row["key"], row["sample"]): row for row in read_table(plan.store, RESPONSES, RESPONSE_KEYS)}
    scores = {(row["key"], row["sample"], row["scorer"]): row for row in read_table(plan.store, SCORES, SCORE_KEYS)}
    rejects = {(row["id"], row["k"]): row for row in plan.store.rejects.read().to_pylist()
               if row["stage"] == "generate"} if plan.store.rejects.shard_paths() else {}
    records = []
    for key, question in zip(plan.keys, plan.questions, strict=True):
        fingerprint = scorer.fingerprint(question)
        for sample in range(plan.samples):
            base = {"id": question.id, "sample": sample, "category": question.category,
                    "question": question.text, "answer": list(question.answers)}
            response, reject = responses.get((key, sample)), rejects.get((key, sample))
            if reject is not None:
                records.append({**base, "response": None, "extracted": None, "correct": False,
                                "reason": reject["reason"], "tokens": 0, "finish_reason": "failed", "method": None})
                continue
            score = scores.get((key, sample, fingerprint)) or {}
            records.append({**base, "response": response["text"] if response else None,
                            "extracted": score.get("extracted"), "correct": score.get("correct"),
                            "reason": score.get("reason") or ("not_scored" if response else "not_generated"),
                            "tokens": response["num_tokens"] if response else None,
                            "finish_reason": response["finish_reason"] if response else None,
                            "method": score.get("method")})
    return records


def summarize_benchmark(plan: Plan, config: EvalConfig, scorer: Scorer, model: str) -> dict[str, Any]:
    records = _records(plan, scorer)
    with atomic_path(plan.directory / RECORDS) as temp:
        temp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    questions = per_question(records, config.samples)
    summary = {"benchmark": plan.spec.name, "format": plan.spec.format, "path": str(plan.spec.path),
               "model": model, "questions": len(plan.questions), "samples": config.samples,
               **summarize(questions),
               "missing": sum(record["correct"] is None for record in records),
               "failed": sum(record["finish_reason"] == "failed" for record in records),
               "scoring": sorted({scorer.method(question) for question in plan.questions}),
               "protocol": {"temperature": config.policy.temperature, "top_p": config.policy.top_p,
                            "max_tokens": config.policy.max_tokens, "system_prompt": config.system_prompt,
                            "response_hint": config.response_hint},
               "categories": by_category(questions)}
    _write_json(plan.directory / BENCHMARK_JSON, summary)
    return summary


def load_benchmarks(out_dir: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(Path(out_dir).glob(f"*/{BENCHMARK_JSON}")):
        try:
            found[path.parent.name] = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise UserError(f"{path}: unreadable ({exc})") from exc
    return found


def write_results(out_dir: str | Path) -> dict[str, Any]:
    out_dir = Path(out_dir)
    benchmarks = load_benchmarks(out_dir)
    if not benchmarks:
        raise UserError(f"{out_dir}: no benchmark results (*/{BENCHMARK_JSON}); run sophia-eval run first")
    scores = [b["pass@1"] for b in benchmarks.values() if b.get("pass@1") is not None]
    results = {"benchmarks": benchmarks,
               "average": {"pass@1": round(sum(scores) / len(scores), 2) if scores else None,
                           "benchmarks": len(scores)}}
    _write_json(out_dir / "results.json", results)
    write_text_atomic(out_dir / "results.md", _results_markdown(results))
    _bar_chart(out_dir / "results.png", list(benchmarks), [b.get("pass@1") for b in benchmarks.values()],
               [b.get("pass@1_se") for b in benchmarks.values()], "pass@1 (%) ± s.e.",
               f"{next(iter(benchmarks.values()))['model']}")
    return results


def _fmt(value: Any, suffix: str = "") -> str:
    return "–" if value is None else f"{value}{suffix}"


def _results_markdown(results: dict[str, Any]) -> str:
    lines = ["# Evaluation results", "", "| benchmark | n | pass@1 ± s.e. | pass@K | mean tokens | truncated | "
             "missing | scoring |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for name, b in results["benchmarks"].items():
        lines.append(f"| {name} | {b['n']} | {_fmt(b['pass@1'])} ± {_fmt(b['pass@1_se'])} | {_fmt(b['pass@k'])} | "
                     f"{_fmt(b['mean_tokens'])} | {_fmt(b['truncation_rate'], ' %')} | {b['missing']} | "
                     f"{', '.join(b['scoring'])} |")
    lines += ["", f"Average pass@1 over {results['average']['benchmarks']} benchmark(s): "
              f"{_fmt(results['average']['pass@1'])}", ""]
    for name, b in results["benchmarks"].items():
        lines += [f"## {name} (K = {b['samples']}, {b['model']})", "",
                  "| category | n | pass@1 ± s.e. | pass@K | mean tokens | truncated |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {category} | {c['n']} | {_fmt(c['pass@1'])} ± {_fmt(c['pass@1_se'])} | {_fmt(c['pass@k'])} | "
                  f"{_fmt(c['mean_tokens'])} | {_fmt(c['truncation_rate'], ' %')} |"
                  for category, c in b["categories"].items()]
        lines.append("")
    return "\n".join(lines)


def _bar_chart(path: Path, names: Sequence[str], values: Sequence[float | None],
               errors: Sequence[float | None], ylabel: str, title: str) -> None:
    """Bars on a 0-100 scale with error bars and the value written above each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.6))
    heights = [v if v is not None else 0.0 for v in values]
    axes.bar(range(len(names)), heights, yerr=[e or 0.0 for e in errors], color="tab:blue", capsize=3)
    for index, value in enumerate(values):
        axes.text(index, (value or 0.0) + 2, _fmt(value), ha="center", fontsize=8)
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_ylim(0, 105)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=120)
    plt.close(figure)


# ---------------------------------------------------------------- compare


def _rates(directory: Path, benchmark: dict[str, Any]) -> dict[str, float]:
    path = directory / benchmark["benchmark"] / RECORDS
    if not path.is_file():
        raise UserError(f"{path}: missing; rerun sophia-eval run (or report) on {directory}")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {key: q["correct"] / q["samples"] for key, q in per_question(records, benchmark["samples"]).items()}


def compare(dir_a: str | Path, dir_b: str | Path, out: str | Path, resamples: int = 10000,
            seed: int = 0) -> dict[str, Any]:
    """Per-benchmark pass@1 of A and B and the paired bootstrap delta B - A; writes compare.{json,md,png}."""
    dir_a, dir_b, out = Path(dir_a), Path(dir_b), Path(out)
    runs_a, runs_b = load_benchmarks(dir_a), load_benchmarks(dir_b)
    shared = [name for name in runs_a if name in runs_b]
    if not shared:
        raise UserError(f"{dir_a} and {dir_b} share no benchmark (found {sorted(runs_a)} and {sorted(runs_b)})")
    rows = {}
    for name in shared:
        delta = paired_bootstrap(_rates(dir_a, runs_a[name]), _rates(dir_b, runs_b[name]), resamples, seed)
        rows[name] = {"a": runs_a[name]["pass@1"], "b": runs_b[name]["pass@1"], **delta}
    result = {"a": str(dir_a), "b": str(dir_b), "resamples": resamples, "benchmarks": rows}
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "compare.json", result)
    write_text_atomic(out / "compare.md", compare_table(result) + "\n")
    _delta_chart(out / "compare.png", rows, f"B - A: {dir_b.name} vs {dir_a.name}")
    return result


def compare_table(result: dict[str, Any]) -> str:
    lines = [f"A = {result['a']}", f"B = {result['b']}", "",
             "| benchmark | n paired | pass@1 A | pass@1 B | delta B-A | 95 % interval |",
             "| --- | ---: | ---: | ---: | ---: | --- |"]
    for name, row in result["benchmarks"].items():
        interval = "–" if row["low"] is None else f"[{row['low']:+.2f}, {row['high']:+.2f}]"
        delta = "–" if row["delta"] is None else f"{row['delta']:+.2f}"
        lines.append(f"| {name} | {row['n']} | {_fmt(row['a'])} | {_fmt(row['b'])} | {delta} | {interval} |")
    return "\n".join(lines)


def _delta_chart(path: Path, rows: dict[str, dict[str, Any]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    deltas = [rows[n]["delta"] or 0.0 for n in names]
    below = [d - (rows[n]["low"] if rows[n]["low"] is not None else d) for n, d in zip(names, deltas)]
    above = [(rows[n]["high"] if rows[n]["high"] is not None else d) - d for n, d in zip(names, deltas)]
    figure, axes = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.6))
    axes.bar(range(len(names)), deltas, yerr=[below, above], capsize=4,
             color=["tab:green" if d >= 0 else "tab:red" for d in deltas])
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.axhline(0, color="black", linewidth=0.6)
    axes.set_ylabel("pass@1 delta (points), 95 % CI")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=120)
    plt.close(figure)
