"""The reward-weighted loss (``sophia_megatron/train/loss.py``), both normalisations, on the loader's weights."""

from __future__ import annotations

import pytest
import torch

from sophia_megatron.data import build_micro_batch
from sophia_megatron.train.loss import weighted_loss


def pack(weights, lengths=(5, 4, 6), pad_to=1):
    """A pack of samples whose tokens are all assistant tokens except each sample's first."""
    ids, mask = [], []
    for n in lengths:
        ids += list(range(1, n + 1))
        mask += [0] + [1] * (n - 1)
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    return build_micro_batch({"input_ids": ids, "loss_mask": mask, "cu_seqlens": cu,
                              "position_ids": [i for n in lengths for i in range(n)],
                              "sample_weights": list(weights), "sample_ids": [f"s{i}" for i in range(len(lengths))],
                              "images": [], "image_tiles": []}, pad_to=pad_to, load_pixels=False)


def nll_for(mb, seed=0):
    return torch.rand(mb.tokens.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32) + 0.1


def per_sample(mb, nll):
    """(sum of w * nll, masked tokens) per sample, computed by hand from the micro-batch."""
    cu = mb.cu_seqlens.tolist()
    out = []
    for lo, hi in zip(cu[:-1], cu[1:]):
        out.append((float((nll[0, lo:hi] * mb.loss_weight[0, lo:hi]).sum()), float(mb.loss_mask[0, lo:hi].sum())))
    return out


def test_token_normalisation_sums_weighted_nll_over_loss_tokens():
    mb = pack([1.0, 0.5, 2.0], pad_to=8)
    nll = nll_for(mb).requires_grad_()
    numerator, denominator, report = weighted_loss(nll, mb.loss_weight, mb.cu_seqlens, mb.loss_tokens, "token",
                                                   loss_mask=mb.loss_mask)
    # each sample's last token predicts nothing; the padding carries no loss
    assert mb.loss_tokens == (5 - 1) + (4 - 1) + (6 - 1) == int(denominator)
    assert torch.isclose(numerator, (nll * mb.loss_weight).sum())
    numerator.backward()
    assert torch.equal(nll.grad, mb.loss_weight)  # d loss / d nll_t = the token's weight
    assert torch.allclose(report["lm loss"], torch.stack([numerator.detach(), denominator.float()]))


def test_sample_normalisation_is_mean_over_samples_of_weighted_sample_means():
    mb = pack([1.0, 0.5, 2.0], pad_to=8)
    nll = nll_for(mb)
    numerator, denominator, _ = weighted_loss(nll, mb.loss_weight, mb.cu_seqlens, mb.loss_tokens, "sample",
                                              loss_mask=mb.loss_mask)
    expected = sum(total / tokens for total, tokens in per_sample(mb, nll) if tokens)
    assert int(denominator) == 3  # the padding pseudo-sample has no loss tokens and does not count
    assert torch.isclose(numerator, torch.tensor(expected))
    # a long sample and a short one weigh the same (unlike token normalisation)
    long_first = pack([1.0, 1.0], lengths=(20, 3))
    nll2 = nll_for(long_first, 1).requires_grad_()
    num2, _, _ = weighted_loss(nll2, long_first.loss_weight, long_first.cu_seqlens, long_first.loss_tokens, "sample",
                               loss_mask=long_first.loss_mask)
    num2.backward()
    assert torch.isclose(nll2.grad[0, 0:20].sum(), torch.tensor(1.0)) and torch.isclose(nll2.grad[0, 20:].sum(),
                                                                                       torch.tensor(1.0))


@pytest.mark.parametrize("normalization", ["token", "sample"])
def test_zero_weight_removes_a_sample_without_rescaling_the_others(normalization):
    """Reward 0 must give no gradient and leave the normaliser alone: the loss is linear in the weights."""
    weights = torch.tensor([0.7, 1.3, 0.4])
    nll = nll_for(pack(weights.tolist()))

    def grad(w):
        mb = pack(w.tolist())
        x = nll.clone().requires_grad_()
        numerator, denominator, _ = weighted_loss(x, mb.loss_weight, mb.cu_seqlens, mb.loss_tokens, normalization,
                                                  loss_mask=mb.loss_mask)
        (numerator / denominator).backward()
        return x.grad

    zero_first = weights.clone()
    zero_first[0] = 0
    first_only = torch.zeros(3)
    first_only[0] = weights[0]
    g, g_zero, g_first = grad(weights), grad(zero_first), grad(first_only)
    assert torch.all(g_zero[0, 0:5] == 0) and g_first[0, 0:5].abs().sum() > 0
    assert torch.allclose(g, g_zero + g_first, atol=1e-7)
    assert torch.allclose(grad(2 * weights), 2 * g, atol=1e-7)


def test_sample_means_do_not_depend_on_what_else_is_in_the_pack():
    together = pack([1.0, 0.5], lengths=(6, 7))
    nll = nll_for(together)
    num, den, _ = weighted_loss(nll, together.loss_weight, together.cu_seqlens, together.loss_tokens, "sample",
                                loss_mask=together.loss_mask)
    alone = [pack([w], lengths=(n,)) for w, n in ((1.0, 6), (0.5, 7))]
    parts = [weighted_loss(nll[:, lo:hi], mb.loss_weight, mb.cu_seqlens, mb.loss_tokens, "sample",
                           loss_mask=mb.loss_mask) for mb, (lo, hi) in zip(alone, ((0, 6), (6, 13)))]
    assert torch.isclose(num, sum(p[0] for p in parts)) and int(den) == sum(int(p[1]) for p in parts)


def test_unknown_normalisation_is_refused():
    mb = pack([1.0], lengths=(5,))
    with pytest.raises(ValueError, match="unknown loss normalisation 'mean'"):
        weighted_loss(nll_for(mb), mb.loss_weight, mb.cu_seqlens, mb.loss_tokens, "mean")
