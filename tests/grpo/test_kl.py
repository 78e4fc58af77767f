"""The KL-to-reference option (``grpo.kl_coef > 0``) of the Megatron GRPO update, on a hand-made batch.

``tests/grpo/workers/kl_reference.py`` trains the tiny policy (real Megatron, one gloo rank, fp32)
for two steps with ``kl_coef`` 0.5 and reports what the trainer measured next to the estimates
computed here from the trainer's forward-only log-probabilities at the start weights (the
reference) and before step 2.
"""

from __future__ import annotations

import json

import pytest

from tests.multirank import REPO, torchrun_script


@pytest.fixture(scope="module")
def kl_report(tiny_root, tmp_path_factory):
    from conversion.convert import hf_to_mcore

    root = tmp_path_factory.mktemp("kl")
    hf_to_mcore(tiny_root["vit300m_qwen2_hf"], root / "mcore", tp=1, pp=1)
    out = root / "kl.json"
    torchrun_script(REPO / "tests" / "grpo" / "workers" / "kl_reference.py", 1, [str(root / "mcore"), str(out)])
    return json.loads(out.read_text())


@pytest.mark.slow
def test_kl_is_zero_while_the_policy_is_the_reference(kl_report):
    # The reference is the start policy: at step 1 every token's k3 is exactly 0. A reference built
    # from other weights (a fresh init, the HF export, a later checkpoint) would not give 0.
    assert kl_report["step1"]["kl"] == 0.0, kl_report


@pytest.mark.slow
def test_kl_is_the_k3_estimate_against_the_frozen_start_policy(kl_report):
    kl, want = kl_report["step2"]["kl"], kl_report["expected"]
    # Step 1 moved the policy: KL to the start policy is positive. Against the current policy or the
    # generator's logprobs (on-policy: the same thing) it would stay 0.
    assert want["k3"] > 1e-4 and kl > 1e-4, kl_report
    # It is k3 = e^(ref - logπ) - (ref - logπ) - 1 with ref the start policy's log-probability, not
    # the reversed difference nor k1; the three differ here by far more than the tolerance.
    assert kl == pytest.approx(want["k3"], rel=1e-4), kl_report
    assert abs(want["k3"] - want["k3_reversed"]) > 1e-2 * want["k3"] and abs(want["k3"] - want["k1"]) > 1e-2 * want["k3"]
    # With advantages 0 the policy term vanishes: the loss is +kl_coef x KL (a KL subtracted, or
    # left out of the loss, fails here).
    assert kl_report["step2"]["loss"] == pytest.approx(kl_report["kl_coef"] * kl, rel=1e-4), kl_report
