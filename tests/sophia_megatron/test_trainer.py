"""The SOPHIA trainer on real Megatron (CPU, gloo): layouts, packing, weighting, resumption, export.

All runs use the tiny InternVL (InternViT-300M-like tower, Qwen2 backbone) converted with
``sophia-convert`` and a packed dataset made by ``sophia-rollout pack``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conversion.hf_formats import iter_checkpoint_tensors
from tests.multirank import REPO, subprocess_env, torchrun_script

CLI = REPO / "sophia_tools" / "train_cli.py"
EQUIVALENCE = Path(__file__).parent / "workers" / "packed_equivalence.py"
STEPS = 20


def recipe(tmp: Path, training: dict, **sections) -> Path:
    base = {"model": {"mcore_dir": str(training["mcore"])}, "data": {"path": str(training["data"])},
            "train": {"steps": STEPS, "packs_per_step": 2, "lr": 2e-3, "warmup_steps": 2, "max_seq_len": 1536},
            "logging": {"metrics_file": str(tmp / "metrics.jsonl")}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def losses(tmp: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (tmp / "metrics.jsonl").read_text().splitlines()]


def train(tmp: Path, training: dict, nproc: int, *args: str, **sections) -> list[float]:
    tmp.mkdir(parents=True, exist_ok=True)
    torchrun_script(CLI, nproc, ["--config", str(recipe(tmp, training, **sections)), *args])
    return losses(tmp)


@pytest.fixture(scope="module")
def reference(tiny_training, tmp_path_factory):
    return train(tmp_path_factory.mktemp("tp1"), tiny_training, 1)


def test_loss_decreases_tp1(reference):
    assert len(reference) == STEPS
    assert sum(reference[-4:]) / 4 < sum(reference[:4]) / 4 - 0.5, reference


@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)], ids=["tp2", "pp2"])
def test_layouts_train_and_match_tp1(tiny_training, reference, tmp_path, tp, pp):
    export = tmp_path / "exported"
    got = train(tmp_path, tiny_training, 2, "--export-hf", str(export), parallel={"tp": tp, "pp": pp},
                checkpoint={"save_dir": str(tmp_path / "ckpt")})
    assert got[-1] < got[0] - 0.5, got
    diffs = [abs(a - b) for a, b in zip(got, reference, strict=True)]
    assert max(diffs) <= 1e-4, f"max |loss - TP1 loss| = {max(diffs):.2e}"
    # The frozen vision tower and projector come back bit-identical; the language model moved.
    before, after = dict(iter_checkpoint_tensors(tiny_training["hf"])), dict(iter_checkpoint_tensors(export))
    assert set(before) == set(after)
    frozen = [n for n in before if n.startswith(("vision_tower.", "multi_modal_projector."))]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    trained = [n for n in before if n.startswith("language_model.")]
    assert sum(not torch.equal(before[n], after[n]) for n in trained) == len(trained)
    # The trainer's distributed checkpoint exports to the same HF weights (loaded at TP=1, resharded).
    proc = subprocess.run([sys.executable, "-m", "sophia_tools.convert_cli", "mcore-to-hf", "--mcore-dir",
                           str(tmp_path / "ckpt"), "--out-dir", str(tmp_path / "from_dist")], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from_dist = dict(iter_checkpoint_tensors(tmp_path / "from_dist"))
    assert set(from_dist) == set(after) and all(torch.equal(from_dist[n], after[n]) for n in after)


DP_STEPS = 4


@pytest.fixture(scope="module")
def dp1_runs(tiny_training, tmp_path_factory):
    """DP=1 losses per normalisation, computed once and only when a data-parallel test asks."""
    cache = {}

    def get(normalization):
        if normalization not in cache:
            tmp = tmp_path_factory.mktemp(f"dp1_{normalization}")
            cache[normalization] = train(tmp, tiny_training, 1, train={"steps": DP_STEPS,
                                                                       "loss_normalization": normalization})
        return cache[normalization]

    return get


@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.parametrize("normalization", ["token", "sample"])
@pytest.mark.parametrize("tp,nproc", [(1, 2), (2, 4)], ids=["dp2", "tp2xdp2"])
def test_data_parallel_matches_dp1_per_step(tiny_training, dp1_runs, tmp_path, normalization, tp, nproc):
    """DP splits each global batch over ranks; the loss and the update must not change (both normalisations)."""
    export = ["--export-hf", str(tmp_path / "hf")] if nproc == 4 else []  # the export's collectives at DP > 1
    got = train(tmp_path, tiny_training, nproc, *export, parallel={"tp": tp},
                train={"steps": DP_STEPS, "loss_normalization": normalization})
    reference = dp1_runs(normalization)
    assert len(got) == DP_STEPS and got[-1] != got[0]
    diffs = [abs(a - b) for a, b in zip(got, reference, strict=True)]
    assert max(diffs) <= 1e-4, f"{normalization}: max |loss - DP1 loss| = {max(diffs):.2e}: {got} vs {reference}"
    assert not export or (tmp_path / "hf" / "config.json").is_file()


@pytest.mark.slow
@pytest.mark.multirank
def test_sophia_train_starts_its_own_ranks(tiny_training, tmp_path):
    """The README's command, ``sophia-train --config R train.steps=... parallel.pp=2``, without torchrun."""
    config = recipe(tmp_path, tiny_training, train={"steps": 2})
    proc = subprocess.run([sys.executable, "-m", "sophia_tools.train_cli", "--config", str(config), "train.steps=2",
                           "parallel.pp=2"], cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(losses(tmp_path)) == 2
    assert "step 2 | loss" in proc.stderr  # progress is printed (by rank 0, also when it is not the last stage)


@pytest.mark.slow
@pytest.mark.multirank
def test_resume_continues_exactly(tiny_training, tmp_path):
    full = train(tmp_path / "full", tiny_training, 2, parallel={"tp": 2}, train={"steps": 8},
                 checkpoint={"save_dir": str(tmp_path / "full_ckpt"), "save_interval": 3})
    interrupted = tmp_path / "part"
    first = train(interrupted, tiny_training, 2, parallel={"tp": 2}, train={"steps": 8, "exit_interval": 3},
                  checkpoint={"save_dir": str(tmp_path / "ckpt")})
    assert first == full[:3]
    (interrupted / "metrics.jsonl").unlink()
    resumed = train(interrupted, tiny_training, 2, parallel={"tp": 2}, train={"steps": 8, "exit_interval": 0},
                    checkpoint={"save_dir": str(tmp_path / "ckpt")})
    assert len(resumed) == 5
    assert resumed == full[3:], (resumed, full[3:])


@pytest.mark.multirank
def test_packed_equals_one_by_one_and_weighting(tiny_training, tmp_path):
    out = tmp_path / "equivalence.json"
    torchrun_script(EQUIVALENCE, 1, ["--mcore-dir", str(tiny_training["mcore"]), "--data",
                                     str(tiny_training["data"]), "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["samples"] >= 3
    assert report["loss_max_abs_diff"] <= 1e-5, report
    assert report["grad_max_abs_diff"] <= 1e-5, report
    assert report["grad_scale"] > 1e-3  # the gradients compared are not trivially zero
    for norm, weighting in report["weighting"].items():  # through the trainer's loss and the loader's weights
        assert weighting["first_sample_grad_norm"] > 1e-3 and weighting["grad_scale"] > 1e-3, (norm, weighting)
        assert weighting["zero_weight_max_abs_diff"] <= 1e-6 * max(1.0, weighting["grad_scale"]), (norm, weighting)
        assert weighting["linearity_max_abs_diff"] <= 1e-6 * max(1.0, weighting["grad_scale"]), (norm, weighting)
