"""GRPO's advantages and clipped token loss as pure functions (the Megatron side is tested in test_loop)."""

from __future__ import annotations

import math

import pytest
import torch

from sophia_megatron.train.grpo_loss import clipped_token_loss, group_advantages


def test_grpo_advantages_are_standardised_per_group():
    adv, reason = group_advantages([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0], [1, 0, 0, 1, 1, 0, 0, 0], "grpo")
    mean, std = 3 / 8, math.sqrt(3 / 8 * 5 / 8)
    assert reason == "kept"
    assert adv == pytest.approx([(r - mean) / std for r in [1, 0, 0, 1, 1, 0, 0, 0]])
    assert sum(adv) == pytest.approx(0.0)


def test_dr_grpo_advantages_are_centred_only():
    adv, _ = group_advantages([1.0, 0.0, 0.0, 0.0], [1, 0, 0, 0], "dr_grpo")
    assert adv == pytest.approx([0.75, -0.25, -0.25, -0.25])


@pytest.mark.parametrize("correct,reason", [([1, 1, 1], "all_correct"), ([0, 0, 0], "all_wrong")])
def test_groups_at_pass_rate_0_or_1_are_dropped(correct, reason):
    # Dropped even when a shaped reward (SRPO) differs inside the group: the paper filters on pass rate.
    assert group_advantages([1.0, 1.2, 0.9], correct, "grpo") == (None, reason)


def test_equal_rewards_are_dropped():
    assert group_advantages([0.5, 0.5], [1, 0], "grpo") == (None, "equal_rewards")


def test_clipping_stops_the_gradient_only_outside_the_trust_region():
    # ratios 1.5 (above 1 + eps) and 0.5 (below 1 - eps), with positive and negative advantages
    gen = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 1.1])).requires_grad_()
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    loss, stats = clipped_token_loss(logp, gen, adv, clip_eps=0.2)
    loss.sum().backward()
    # A > 0 and ratio > 1 + eps: clipped, no gradient; A < 0 and ratio > 1 + eps: unclipped (pessimistic)
    # A < 0 and ratio < 1 - eps: clipped; inside the region: d(-ratio*A)/dlogp = -ratio*A
    assert stats["clipped"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert logp.grad.tolist() == pytest.approx([0.0, 1.5, 0.0, -1.1])
    assert loss.tolist() == pytest.approx([-1.2, 1.5, 0.8, -1.1])


def test_kl_term_is_k3_and_zero_at_the_reference():
    logp = torch.tensor([-1.0, -2.0])
    _, stats = clipped_token_loss(logp, logp, torch.ones(2), 0.2, ref_logprob=logp.clone(), kl_coef=0.1)
    assert stats["kl"].tolist() == [0.0, 0.0]
    loss, stats = clipped_token_loss(logp, logp, torch.zeros(2), 0.2, ref_logprob=torch.tensor([-2.0, -2.0]),
                                     kl_coef=0.1)
    assert stats["kl"][0].item() == pytest.approx(math.exp(-1) + 1 - 1)
    assert loss[0].item() == pytest.approx(0.1 * math.exp(-1))
