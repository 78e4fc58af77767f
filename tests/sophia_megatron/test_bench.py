"""``sophia-profile train`` runs the real update path and reports honest numbers (CPU, tiny preset)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.multirank import REPO, subprocess_env


@pytest.mark.slow
def test_profile_train_tiny(tmp_path):
    plot = tmp_path / "train.png"
    proc = subprocess.run([sys.executable, "-m", "sophia_tools.profile_cli", "train", "--preset", "tiny",
                           "--steps", "2", "--warmup", "1", "--plot", str(plot)], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    run = report["runs"][0]
    assert run["device"] == "cpu" and run["mfu"] is None  # no meaningful peak on a CPU
    assert run["tokens_per_s"] > 0 and run["tflops_per_gpu"] > 0 and len(run) > 5
    assert plot.stat().st_size > 1000


def test_profile_loader_reads_what_it_uses():
    """``sophia-profile loader``: the loader's read amplification meets the target; the old way's does not."""
    proc = subprocess.run([sys.executable, "-m", "sophia_tools.profile_cli", "loader", "--packs", "96",
                           "--packs-per-shard", "48", "--seq", "256", "--dp", "2", "--packs-per-step", "4",
                           "--steps", "16"], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    loader, baseline = report["runs"]
    assert loader["loader"] == "loader" and loader["micro_batches"] == 16 * 4 // 2 == baseline["micro_batches"]
    assert loader["read_amplification"] <= 2.0, loader
    assert baseline["read_amplification"] > 5 * loader["read_amplification"], report
    assert loader["micro_batches_per_s"] > 0 and loader["bytes_read_per_micro_batch"] > 0
