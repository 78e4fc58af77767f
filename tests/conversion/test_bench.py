"""``sophia-profile conversion`` runs end to end at a small size and reports what the issue asks."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.multirank import REPO, subprocess_env


def test_profile_conversion_small(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sophia_tools.profile_cli", "conversion", "--preset", "small",
                           "--depths", "2,4", "--tp", "8", "--pp", "2", "--rounds", "2", "--workdir", str(tmp_path)], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["lm_layers"] for r in report["runs"]] == [2, 4]
    for run in report["runs"]:
        assert run["bytes"] > 0 and run["bytes_written"] >= run["bytes"]  # replicated vision, padded vocab
        assert run["gb_per_s"] > 0 and run["copy_gb_per_s"] > 0 and run["ratio_vs_copy"] > 0
        assert len(run["seconds_each"]) == 2 and len(run["copy_seconds_each"]) == 3  # alternating rounds
        assert run["peak_rss_bytes"] > 0
    assert "rss_growth_when_depth_doubles" in report
    assert not list(tmp_path.iterdir())  # scratch cleaned up
