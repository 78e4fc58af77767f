"""The GRPO loop end to end on CPU: real Megatron (gloo), real transformers generation, the real verifier.

One uninterrupted 4-step run of the warmed-up tiny policy is the reference for: the metrics and the
train/inference mismatch, exact resumption after SIGUSR1, and TP=2 / PP=2 on its stored rollouts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.grpo.conftest import grpo_recipe
from tests.multirank import REPO, subprocess_env, torchrun_script

WORKER = Path(__file__).parent / "workers" / "train_on_rollouts.py"
COMPARED = ("loss", "reward_mean", "pass_rate", "groups_kept", "response_tokens_mean", "mismatch", "entropy",
            "grad_norm", "loss_tokens")


def sophia_train(recipe: Path, *extra: str, timeout: float = 900) -> None:
    proc = subprocess.run([sys.executable, "-m", "sophia_tools.train_cli", "--config", str(recipe), *extra],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


def steps(out: Path) -> list[dict]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "loss" in line]


@pytest.fixture(scope="module")
def reference(warm_policy, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    sophia_train(grpo_recipe(out, warm_policy))
    return out


@pytest.mark.slow
def test_every_step_trains_syncs_and_reports(reference):
    history = steps(reference)
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    trained = [h for h in history if not h["skipped"]]
    assert trained, "no step kept a group: the warmed-up policy should pass 0 < rate < 1"
    for h in trained:
        # The trainer's recomputed logprobs of the sampled tokens equal the generator's (fp32, CPU): a
        # shifted label, a wrong temperature or a stale generator after the sync would be far off.
        assert h["mismatch"] < 1e-4, h
        assert h["sync_seconds"] > 0 and h["generate_seconds"] > 0 and h["train_seconds"] > 0
        assert h["groups_kept"] + h["groups_dropped"] == 2
        assert 0 < h["pass_rate"] < 1 and h["clip_fraction"] == 0.0  # on-policy: ratio 1, nothing clipped
        assert h["entropy"] > 0 and h["kl"] is None
    assert len({h["loss"] for h in trained}) == len(trained)  # the policy moves between steps
    assert list((reference / "tb").glob("events.out.tfevents.*"))
    stored = [json.loads(line) for line in (reference / "ckpt" / "rollouts" / "step_0000000.jsonl").read_text().splitlines()]
    assert len(stored) == 8 and all(len(r["sample"]["gen_logprobs"]) == r["tokens"] for r in stored if r["sample"])


@pytest.mark.slow
def test_resume_after_sigusr1_equals_the_uninterrupted_run(reference, warm_policy, tmp_path):
    recipe = grpo_recipe(tmp_path, warm_policy)
    proc = subprocess.Popen([sys.executable, "-m", "sophia_tools.train_cli", "--config", str(recipe)], cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 900
    while not ((tmp_path / "metrics.jsonl").is_file() and steps(tmp_path)):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first step"
        time.sleep(0.5)
    proc.send_signal(signal.SIGUSR1)  # SLURM's warning: checkpoint at the next step boundary and exit 0
    _, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    stopped = int((tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text())
    assert 1 <= stopped < 4, f"stopped at step {stopped}"
    sophia_train(recipe)  # resumes: weights, optimizer, schedule; the same questions and rollout seeds
    got, want = steps(tmp_path), steps(reference)
    assert [h["step"] for h in got] == [1, 2, 3, 4]
    for g, w in zip(got, want, strict=True):
        assert {k: g[k] for k in COMPARED} == {k: w[k] for k in COMPARED}, f"step {g['step']} differs"


@pytest.mark.slow
@pytest.mark.multirank
def test_tp2_and_pp2_losses_match_tp1_on_the_same_rollouts(reference, warm_policy, tmp_path):
    rollouts = reference / "ckpt" / "rollouts"
    results, weights = {}, {}
    for name, (tp, pp) in {"tp1": (1, 1), "tp2": (2, 1), "pp2": (1, 2)}.items():
        out = tmp_path / f"{name}.json"
        torchrun_script(WORKER, tp * pp, [str(warm_policy["mcore"]), str(rollouts), str(tp), str(pp), str(out),
                                          str(warm_policy["hf"])])
        report = json.loads(out.read_text())
        assert report["sync_exact_at_start"], f"{name}: the weight sync does not give back the HF checkpoint"
        assert report["vision_unchanged"], f"{name}: the frozen vision tower or projector moved"
        results[name] = report["steps"]
        weights[name] = torch.load(str(out) + ".weights.pt")
    trained = [h for h in steps(reference) if not h["skipped"]]
    assert len(results["tp1"]) == len(trained) >= 2
    for name in ("tp2", "pp2"):  # the synced weights after training agree across layouts (TP gather, PP send)
        assert set(weights[name]) == set(weights["tp1"])
        # (Adam amplifies last-bit gradient differences up to ~lr; a wrong gather or send is off by ~1e-2)
        assert max((weights[name][k] - weights["tp1"][k]).abs().max().item() for k in weights["tp1"]) < 2e-4
    for name in ("tp1", "tp2", "pp2"):
        # Same rollouts, same settings, other layout: the loop's losses, step after step; and the
        # vocab-parallel log-probabilities still equal the generator's at every step.
        diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(results[name], trained, strict=True)]
        assert max(diffs) <= 1e-4, f"{name}: max |loss - TP1 loop loss| = {max(diffs):.2e}"
        assert max(h["mismatch"] for h in results[name]) < 1e-4, name
