"""The SOPHIA objective on one micro-batch: reward-weighted token NLL (docs/ALGORITHM.md §1.1, Eq. 7).

∇J ≈ E_D[r · ∇ log π_θ(y | q, I)]: every assistant token's negative log-likelihood is
multiplied by its sample's reward weight r (1 for SFT). Two normalisations:

- ``token`` (default): Σ r·nll over the global batch ÷ the number of loss tokens in the
  global batch. Megatron does the division (``calculate_per_token_loss``): each micro-batch
  returns its sum and its token count, and the gradients are divided by the all-reduced
  total, so micro-batching, packing and data parallelism do not change the update.
- ``sample``: Σ over samples of r · (mean nll of the sample) ÷ the number of samples.

A sample of weight 0 contributes exactly zero gradient; gradients are linear in the weights.
"""

from __future__ import annotations

from typing import Any

import torch


def weighted_loss(per_token_nll: torch.Tensor, loss_weight: torch.Tensor, cu_seqlens: torch.Tensor,
                  loss_tokens: int, normalization: str, loss_mask: torch.Tensor | None = None,
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """(loss numerator, denominator, report) in Megatron's per-token-loss convention.

    ``loss_weight`` is the per-token weight (the shifted assistant mask times the sample's reward),
    ``loss_mask`` the mask alone: under ``sample`` normalisation a sample counts, and its mean is
    taken, over its masked tokens whatever its reward, so a reward of 0 removes the sample's
    gradient without changing anyone else's scale (as ``loss_tokens`` does for ``token``).
    """
    nll = per_token_nll.float().reshape(-1)
    weight = loss_weight.reshape(-1).to(nll.device)
    if normalization == "token":
        numerator = (nll * weight).sum()
        denominator = torch.tensor(loss_tokens, dtype=torch.int, device=nll.device)
    elif normalization == "sample":
        mask = (weight != 0).float() if loss_mask is None else loss_mask.reshape(-1).to(nll.device).float()
        lengths = torch.diff(cu_seqlens.to(nll.device).long())
        sample = torch.repeat_interleave(torch.arange(len(lengths), device=nll.device), lengths)
        per_sample_weighted = torch.zeros(len(lengths), device=nll.device).index_add_(0, sample, nll * weight)
        per_sample_tokens = torch.zeros(len(lengths), device=nll.device).index_add_(0, sample, mask)
        counted = per_sample_tokens > 0
        numerator = (per_sample_weighted[counted] / per_sample_tokens[counted]).sum()
        denominator = torch.tensor(int(counted.sum()), dtype=torch.int, device=nll.device)
    else:
        raise ValueError(f"unknown loss normalisation {normalization!r} (choose 'token' or 'sample')")
    report = torch.stack([numerator.detach().clone(), denominator.detach().float()])
    return numerator, denominator, {"lm loss": report}
