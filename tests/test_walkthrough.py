"""The README's local walk-through, run as written, so that it stays true.

The test extracts the bash block between ``<!-- walkthrough:start -->`` and
``<!-- walkthrough:end -->`` in README.md and runs it with ``bash -euo pipefail`` and the
variables the README tells a user to set, pointed at the tiny offline fixtures and at a
handful of images of "one's own" drawn here. It catches a README command that no longer
exists, a flag or key renamed under it, a path rule that changed, or a stage whose output the
next stage cannot read. Random tiny models select few or no trajectories, which is why the
walk-through packs the user's VQA samples alongside them (as the paper's data mix does) and why
the README names the demo's warmed-up models for real use.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.multirank import REPO, subprocess_env

pytestmark = pytest.mark.slow

BLOCK = re.compile(r"<!-- walkthrough:start -->\s*```bash\n(.*?)```\s*<!-- walkthrough:end -->", re.S)


def walkthrough_script() -> str:
    found = BLOCK.findall((REPO / "README.md").read_text(encoding="utf-8"))
    assert len(found) == 1, "README.md must hold exactly one walk-through block"
    return found[0]


def write_own_data(root: Path) -> dict[str, Path]:
    """Six images of coloured squares with questions about them, as a user would bring them."""
    from PIL import Image

    colours = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60)}
    (root / "images").mkdir(parents=True)
    rows, heldout, vqa = [], [], []
    for index, (name, rgb) in enumerate(list(colours.items()) * 2):
        image = root / "images" / f"img{index}.png"
        Image.new("RGB", (448, 448), rgb).save(image)
        row = {"id": f"own-{index}", "image": str(image), "question": "What colour is the image?",
               "answer": name, "source": "own"}
        (heldout if index >= 4 else rows).append(row)
        vqa.append({**row, "id": f"vqa-{index}", "response": f"The image is {name}."})
    paths = {"IMAGES": root / "inputs.jsonl", "HELDOUT": root / "heldout.jsonl", "VQA": root / "vqa.jsonl"}
    for key, records in (("IMAGES", rows), ("HELDOUT", heldout), ("VQA", vqa)):
        paths[key].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return paths


def test_readme_walkthrough_runs_as_written(tiny_root, tmp_path):
    script = walkthrough_script()
    data = write_own_data(tmp_path / "own")
    work = tmp_path / "work"
    env = subprocess_env()
    env.update({key: str(path) for key, path in data.items()})
    env.update(POLICY=str(tiny_root["vit300m_qwen2_hf"]), REASONER=str(tiny_root["reasoner"]), WORK=str(work),
               PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}", VLLM_CPU_KVCACHE_SPACE="1",
               OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1500)
    assert proc.returncode == 0, f"walk-through failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    # Every stage left what the next one reads, at the places the README names.
    assert (work / "mcore" / "sophia_meta.json").is_file()
    assert (work / "store").is_dir()
    manifest = json.loads((work / "packed" / "manifest.json").read_text())
    vqa_rows = len(data["VQA"].read_text().splitlines())
    assert manifest["stats"]["samples_packed"] >= vqa_rows
    assert (work / "trained" / "config.json").is_file()
    for name in ("eval_before", "eval_after"):
        results = json.loads((work / name / "results.json").read_text())
        assert results["benchmarks"]["mine"]["n"] == 2, name
    compared = json.loads((work / "eval_compare" / "compare.json").read_text())
    assert "mine" in json.dumps(compared)
