"""sophia-eval end to end on CPU: the tiny InternVL policy (transformers engine) on every sample format,
resumption after SIGKILL, and the content-keyed store (a changed setting recomputes, nothing else does)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluation.config import load_config
from evaluation.formats import read_benchmark
from evaluation.run import evaluate, parse_benchmarks
from rollout.engines import make_engine
from sophia_tools.eval_cli import main as eval_main
from sophia_tools.tiny.benchmarks import build_benchmarks
from tests.multirank import REPO, subprocess_env

pytestmark = pytest.mark.slow
CPU = ["policy.engine=transformers", "policy.dtype=float32", "policy.max_tiles=1", "policy.max_tokens=4",
       "verifier.workers=1"]


def spec_text(samples: dict[str, tuple[str, Path]], names=None) -> str:
    return ",".join(f"{name}:{fmt}={path}" for name, (fmt, path) in samples.items() if not names or name in names)


class CountingFactory:
    """make_engine, counting the engines started and the requests they get (the real engine runs)."""

    def __init__(self):
        self.engines, self.requests = 0, []

    def __call__(self, *args, **kwargs):
        engine = make_engine(*args, **kwargs)
        self.engines += 1
        generate = engine.generate

        def counted(requests, params):
            self.requests += [request.key for request in requests]
            return generate(requests, params)

        engine.generate = counted
        return engine


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    return build_benchmarks(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def evaluated(tiny_root, benchmarks, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    code = eval_main(["run", "--config", str(REPO / "configs" / "tiny.yaml"), "--model",
                      str(tiny_root["vit300m_qwen2_hf"]), "--benchmarks", spec_text(benchmarks), "--out", str(out),
                      "--samples", "1", *CPU])
    assert code == 0
    return out


def test_every_format_end_to_end(evaluated, benchmarks):
    """Each benchmark: one record per question with response, verdict, reason, tokens; results files."""
    results = json.loads((evaluated / "results.json").read_text())
    assert set(results["benchmarks"]) == set(benchmarks)
    for name, (fmt, path) in benchmarks.items():
        ids = {q.id for q in read_benchmark(name, fmt, path)}
        summary = results["benchmarks"][name]
        assert summary["n"] == len(ids) and summary["missing"] == 0 and summary["samples"] == 1, name
        assert 0 <= summary["pass@1"] <= 100 and summary["mean_tokens"] > 0
        lines = (evaluated / name / "records.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert {r["id"] for r in records} == ids and len(records) == len(ids)
        for record in records:
            assert isinstance(record["response"], str) and isinstance(record["correct"], bool), record
            assert record["reason"] and 0 < record["tokens"] <= 4 and record["finish_reason"] in ("stop", "length")
            assert record["method"] == "rules-extract+rules"
    assert results["average"]["benchmarks"] == len(benchmarks)
    assert "| mv_math | 2 |" in (evaluated / "results.md").read_text()
    assert (evaluated / "results.png").read_bytes().startswith(b"\x89PNG")


def test_rerun_recomputes_nothing_and_a_changed_setting_recomputes(evaluated, benchmarks, tiny_root):
    """Same settings: no engine starts. Another max_tokens: new content keys, so fresh responses."""
    config = load_config(REPO / "configs" / "tiny.yaml", ["samples=1", *CPU])
    specs = parse_benchmarks(spec_text(benchmarks, ["generic"]))
    factory = CountingFactory()
    evaluate(config, tiny_root["vit300m_qwen2_hf"], specs, evaluated, engine_factory=factory)
    assert factory.engines == 0
    changed = load_config(REPO / "configs" / "tiny.yaml", ["samples=1", *CPU, "policy.max_tokens=3"])
    evaluate(changed, tiny_root["vit300m_qwen2_hf"], specs, evaluated, engine_factory=factory)
    assert factory.engines == 1 and len(factory.requests) == 2
    records = [json.loads(line) for line in (evaluated / "generic" / "records.jsonl").read_text().splitlines()]
    assert all(record["tokens"] <= 3 for record in records)


def _stored(out: Path) -> dict[str, float]:
    return {str(path): path.stat().st_mtime_ns for path in out.glob("*/store/responses/part-*.parquet")}


def test_sigkill_then_resume_without_recomputing(tiny_root, benchmarks, tmp_path):
    """A run killed with SIGKILL mid-generation resumes: only the missing responses are generated."""
    names = ["generic", "mv_math"]
    out = tmp_path / "out"
    command = [sys.executable, "-m", "sophia_tools.eval_cli", "run", "--config", str(REPO / "configs" / "tiny.yaml"),
               "--model", str(tiny_root["vit300m_qwen2_hf"]), "--benchmarks", spec_text(benchmarks, names),
               "--out", str(out), "--samples", "2", "batch_size=1", *CPU]
    process = subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(_stored(out)) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    _, stderr = process.communicate()
    before = _stored(out)
    assert process.returncode == -signal.SIGKILL and 3 <= len(before) < 8, stderr[-2000:]

    config = load_config(REPO / "configs" / "tiny.yaml", ["samples=2", "batch_size=1", *CPU])
    factory = CountingFactory()
    results = evaluate(config, tiny_root["vit300m_qwen2_hf"], parse_benchmarks(spec_text(benchmarks, names)), out,
                       engine_factory=factory)
    assert len(factory.requests) == 8 - len(before)  # each shard holds one response (batch_size=1)
    after = _stored(out)
    assert len(after) == 8 and all(after[path] == mtime for path, mtime in before.items())
    assert all(results["benchmarks"][name]["missing"] == 0 for name in names)
    assert sum(results["benchmarks"][name]["n"] for name in names) == 4


def test_the_same_weights_saved_again_draw_the_same_samples(tiny_root, benchmarks, tmp_path):
    """Per-request seeds come from question, prompt and sampling, not from the model's files: a copy of
    the weights (new mtimes, so a new store key) answers with the same draws, and so does any other model
    (paired comparisons share their random numbers). Bug caught: seeds keyed by the model fingerprint."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_root["vit300m_qwen2_hf"], copy, copy_function=shutil.copy)  # fresh mtimes
    config = load_config(REPO / "configs" / "tiny.yaml", ["samples=2", *CPU, "policy.temperature=1.0"])
    specs = parse_benchmarks(spec_text(benchmarks, ["generic"]))
    answers, keys = [], []
    for name, model in (("original", tiny_root["vit300m_qwen2_hf"]), ("copy", copy)):
        factory = CountingFactory()
        evaluate(config, model, specs, tmp_path / name, engine_factory=factory)
        records = [json.loads(line) for line in (tmp_path / name / "generic" / "records.jsonl").read_text().splitlines()]
        answers.append(sorted((r["id"], r["sample"], r["response"]) for r in records))
        keys.append(sorted(factory.requests))
    assert keys[0] == keys[1] and len(keys[0]) == 4
    assert answers[0] == answers[1] and len({a[2] for a in answers[0]}) > 1  # sampled, and the same draws
