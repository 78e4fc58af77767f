"""Recipes (configs/*.yaml): every key documented, every section valid, layouts planned.

The comment rule: each ``key:`` line (list items included) carries an inline ``# comment``,
so a recipe explains itself where it is read. Validation loads every section into the
dataclass of the component that owns it, so a stale or misspelt key fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sophia_common.config import build, read_recipe
from tests.multirank import REPO, subprocess_env

RECIPES = sorted((REPO / "configs").glob("*.yaml"))
KEY_LINE = re.compile(r"^\s*(- )?[A-Za-z_][\w]*:")


def test_the_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert {"tiny", "internvl2_5_8b", "internvl3_8b", "internvl2_5_38b", "internvl3_38b"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_key_is_documented(path):
    undocumented = [f"{path.name}:{i}: {line.strip()}" for i, line in enumerate(path.read_text().splitlines(), 1)
                    if KEY_LINE.match(line) and "#" not in line]
    assert not undocumented, "keys without a comment:\n" + "\n".join(undocumented)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_section_validates(path):
    raw = read_recipe(path)
    if "model" in raw:
        from sophia_megatron.train.config import load_train_recipe

        load_train_recipe(str(path), [])
    if "pack" in raw:
        from rollout.pack.build import PackConfig

        build(PackConfig, raw["pack"], "pack")
    if "rollout" in raw:
        from rollout.config import RolloutConfig

        build(RolloutConfig, raw["rollout"], "rollout")


def dry_run(path: Path, *overrides: str) -> tuple[int, dict]:
    proc = subprocess.run([sys.executable, "-m", "sophia_tools.train_cli", "--config", str(path), "--dry-run",
                           *overrides], cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize("name", ["internvl3_38b", "internvl2_5_38b", "internvl3_8b", "internvl2_5_8b"])
def test_cluster_recipes_fit_80gb(name):
    code, report = dry_run(REPO / "configs" / f"{name}.yaml")
    assert code == 0 and report["fits"], report
    assert report["dp"] * report["tp"] * report["pp"] == report["world_size"]
    first = report["memory_gib_per_gpu"]["first"]
    assert 0 < first["weights"] < first["total"] <= 80


def test_layout_that_cannot_fit_is_reported():
    code, report = dry_run(REPO / "configs" / "internvl3_38b.yaml", "parallel.tp=1", "parallel.pp=1",
                           "parallel.world_size=8", "parallel.sequence_parallel=false")
    assert code == 1 and not report["fits"]
    assert any("exceeds 80 GiB" in p for p in report["problems"])


def test_bad_layout_is_reported():
    code, report = dry_run(REPO / "configs" / "internvl3_8b.yaml", "parallel.tp=8")
    assert code == 1
    assert any("query groups" in p for p in report["problems"]), report
