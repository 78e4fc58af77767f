"""launchers/eval.sh outside SLURM: array-task selection, the judge switch, and clear refusals.

``srun`` is replaced by a stand-in on PATH that prints the command it was given (no SLURM here; the
real-cluster launcher tests live in tests/launchers). The report stage runs the real sophia-eval.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.multirank import REPO

LAUNCHER = REPO / "launchers" / "eval.sh"


def run(tmp_path, **env):
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    (shim / "srun").write_text('#!/usr/bin/env bash\nwhile [[ $# -gt 0 && $1 == -* ]]; do shift; done\n'
                               'printf "RAN %s\\n" "$*"\n')
    (shim / "srun").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    environment = {**base, "PATH": f"{shim}:{base['PATH']}", "SOPHIA_ROOT": str(REPO), "PYTHON": sys.executable,
                   "CONFIG": "configs/tiny.yaml", **env}
    return subprocess.run(["bash", str(LAUNCHER)], env=environment, capture_output=True, text=True, timeout=60)


def test_array_task_runs_its_benchmark_with_the_judge(tmp_path):
    proc = run(tmp_path, MODEL="m", OUT="o", BENCHMARKS="mmmu=/d/MMMU,mathvista=/d/MathVista",
               SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2", JUDGE_URL="http://judge:8000", SAMPLES="4")
    assert proc.returncode == 0, proc.stderr
    ran = [line for line in proc.stdout.splitlines() if line.startswith("RAN ")]
    assert len(ran) == 1 and "--benchmarks mathvista=/d/MathVista --out o --samples 4" in ran[0]
    assert ran[0].endswith("eval.extract=llm eval.judge=llm eval.llm.base_url=http://judge:8000")
    assert "SOPHIA-LAUNCHER-OK" in proc.stderr


def test_refusals(tmp_path):
    proc = run(tmp_path, MODEL="m", OUT="o", BENCHMARKS="a=1,b=2", SLURM_ARRAY_TASK_ID="0",
               SLURM_ARRAY_TASK_COUNT="3")
    assert proc.returncode != 0 and "the array has 3 tasks but BENCHMARKS names 2" in proc.stderr
    proc = run(tmp_path, OUT="o", BENCHMARKS="a=1")
    assert proc.returncode != 0 and "MODEL is required" in proc.stderr


def test_report_stage_merges(tmp_path):
    for name, pass1 in (("a", 40.0), ("b", 60.0)):
        (tmp_path / "out" / name).mkdir(parents=True)
        summary = {"benchmark": name, "model": "m", "samples": 1, "n": 1, "pass@1": pass1, "pass@1_se": 0.0,
                   "pass@k": pass1, "mean_tokens": 1.0, "truncation_rate": 0.0, "missing": 0, "scoring": ["rules"],
                   "categories": {}}
        (tmp_path / "out" / name / "benchmark.json").write_text(json.dumps(summary))
    proc = run(tmp_path, OUT=str(tmp_path / "out"), STAGE="report")
    assert proc.returncode == 0, proc.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["average"] == {"pass@1": 50.0, "benchmarks": 2}
