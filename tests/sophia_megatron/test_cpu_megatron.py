"""Real Megatron-Core on CPU with gloo: a tiny GPTModel trains at several layouts, identically.

Every layout starts from the same initial weights (the TP=1 PP=1 run saves them; the others
shard them with ``conversion.megatron_layout``) and sees the same global batches, so the
per-step losses must agree to float error: TP=2, PP=2 (1F1B), TP=2 x PP=2 (4 ranks,
oversubscribed) and DP=2 (distributed optimizer sharding) against TP=1 PP=1.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.multirank import torchrun_script

WORKER = Path(__file__).parent / "workers" / "gpt_train.py"
STEPS = "12"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt")
    torchrun_script(WORKER, 1, ["--steps", STEPS, "--save-init", str(out / "init.pt"),
                                "--out", str(out / "ref.json")])
    return out, json.loads((out / "ref.json").read_text())["losses"]


def test_reference_loss_decreases(reference):
    _, losses = reference
    assert len(losses) == int(STEPS)
    assert losses[-1] < losses[0] - 0.05, losses


@pytest.mark.multirank
@pytest.mark.slow
@pytest.mark.parametrize("tp,pp,nproc", [(2, 1, 2), (1, 2, 2), (1, 1, 2), (2, 2, 4)],
                         ids=["tp2", "pp2", "dp2", "tp2pp2"])
def test_layout_matches_reference(reference, tp, pp, nproc):
    out, ref_losses = reference
    result = out / f"tp{tp}pp{pp}n{nproc}.json"
    torchrun_script(WORKER, nproc, ["--steps", STEPS, "--tp", str(tp), "--pp", str(pp),
                                    "--load-init", str(out / "init.pt"), "--out", str(result)])
    data = json.loads(result.read_text())
    assert data["world"] == nproc
    losses = data["losses"]
    assert losses[-1] < losses[0] - 0.05, losses
    diffs = [abs(a - b) for a, b in zip(losses, ref_losses, strict=True)]
    assert max(diffs) <= 1e-5, f"max |loss - reference| = {max(diffs):.2e}: {losses} vs {ref_losses}"
