"""The tree is ruff-clean (the convention of the foundation issue), checked with the pinned ruff."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from tests.multirank import REPO


def test_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is a dev dependency (pip install -e .[dev])"
    proc = subprocess.run([ruff, "check", "."], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]
