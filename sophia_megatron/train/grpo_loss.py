"""GRPO's objective: group-relative advantages and the clipped token-level policy-gradient loss.

Advantages (one group = the G rollouts of one question, rewards r_1..r_G):

- ``grpo``: A_i = (r_i - mean(r)) / std(r) (population std), the loss averaged over every
  response token of the global batch (token-level, as in DAPO);
- ``dr_grpo`` (Dr. GRPO, as RIL uses): A_i = r_i - mean(r), no std division, and no length
  normalisation: the summed token loss is divided by a constant, (sequences x max_tokens),
  so a long response weighs no less per token than a short one.

A group whose pass rate is exactly 0 or 1, or whose rewards are all equal, carries no signal and
is dropped (``group_advantages`` returns ``None`` with the reason, and the loop counts it).

Per response token t of rollout i, with ρ = exp(log π_θ(y_t) - log μ(y_t)) against the logprob
μ the *generator* reported when it sampled the token (PPO clipping, ε = 0.2):

    loss_t = -min(ρ A_i, clip(ρ, 1 - ε, 1 + ε) A_i)  [+ β · KL_t]

with the optional KL to a frozen reference, k3 estimator KL_t = e^{ref - logπ} - (ref - logπ) - 1.
Logits are vocabulary-parallel under TP: log-probabilities go through Megatron's
``vocab_parallel_cross_entropy`` and the entropy metric all-reduces over the TP group, so the
loss is the same at any TP (tests/grpo). Megatron's ``calculate_per_token_loss`` convention:
every micro-batch returns (sum, count) and the gradient is divided by the global count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

ADVANTAGES = ("grpo", "dr_grpo")
STD_EPS = 1e-6
# Per-micro-batch sums reported to the loop, in this order (last pipeline stage).
STAT_KEYS = ("tokens", "abs_mismatch", "entropy", "clipped", "kl", "ratio")


def group_advantages(rewards: Sequence[float], correct: Sequence[bool], mode: str) -> tuple[list[float] | None, str]:
    """Advantages of one group, or ``(None, reason)`` when the group is dropped.

    ``correct`` is the verifier's outcome per rollout (the pass rate the paper filters on);
    ``rewards`` may add more (SRPO), so a group is also dropped when its rewards are all equal.
    """
    if mode not in ADVANTAGES:
        raise ValueError(f"advantage must be one of {ADVANTAGES}, got {mode!r}")
    if len(rewards) != len(correct) or not rewards:
        raise ValueError(f"a group needs as many outcomes as rewards, got {len(correct)} and {len(rewards)}")
    passed = sum(bool(c) for c in correct)
    if passed == 0:
        return None, "all_wrong"
    if passed == len(correct):
        return None, "all_correct"
    mean = sum(rewards) / len(rewards)
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / len(rewards))
    if std < STD_EPS:
        return None, "equal_rewards"
    if mode == "dr_grpo":
        return [r - mean for r in rewards], "kept"
    return [(r - mean) / std for r in rewards], "kept"


def clipped_token_loss(logprob: Any, gen_logprob: Any, advantage: Any, clip_eps: float,
                       ref_logprob: Any = None, kl_coef: float = 0.0) -> tuple[Any, dict[str, Any]]:
    """Per-token PPO-clipped policy-gradient loss and its per-token statistics (unmasked)."""
    import torch

    ratio = torch.exp(logprob - gen_logprob)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantage
    loss = -torch.minimum(unclipped, clipped)
    stats = {"clipped": (clipped < unclipped).float().detach(), "ratio": ratio.detach(),
             "kl": torch.zeros_like(loss).detach()}
    if ref_logprob is not None:
        log_ratio = ref_logprob - logprob
        kl = torch.exp(log_ratio) - log_ratio - 1.0
        stats["kl"] = kl.detach()
        if kl_coef:
            loss = loss + kl_coef * kl
    return loss, stats


def vocab_parallel_entropy(logits: Any) -> Any:
    """Entropy of softmax(logits) per position, logits split over the TP group (no gradient)."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    group = parallel_state.get_tensor_model_parallel_group()
    with torch.no_grad():
        local = logits.detach().float()
        peak = local.max(dim=-1).values
        dist.all_reduce(peak, op=dist.ReduceOp.MAX, group=group)
        shifted = local - peak.unsqueeze(-1)
        exp = torch.exp(shifted)
        sums = torch.stack([exp.sum(-1), (exp * shifted).sum(-1)])
        dist.all_reduce(sums, group=group)
        return torch.log(sums[0]) - sums[1] / sums[0]


def token_logprobs(logits: Any, labels: Any) -> Any:
    """log softmax(logits)[label] per position (differentiable; consumes ``logits`` in place)."""
    from megatron.core import tensor_parallel

    return -tensor_parallel.vocab_parallel_cross_entropy(logits, labels)


def grpo_loss(logits: Any, *, labels: Any, loss_mask: Any, gen_logprobs: Any, advantages: Any,
              denominator: int, clip_eps: float, ref_logprobs: Any = None,
              kl_coef: float = 0.0) -> tuple[Any, Any, dict[str, Any]]:
    """(loss sum, denominator, report) of one micro-batch from the last stage's logits ``[b, s, v/TP]``.

    ``logits`` are already divided by the sampling temperature and have the padded vocabulary masked.

    ``report["grpo"]`` holds the sums of ``STAT_KEYS`` over the micro-batch's loss tokens and
    ``report["lm loss"]`` the (loss sum, denominator) pair the trainer reduces.
    """
    import torch

    entropy = vocab_parallel_entropy(logits)
    logprob = token_logprobs(logits, labels)
    mask = loss_mask.to(logprob.device).float()
    loss, stats = clipped_token_loss(logprob, gen_logprobs.to(logprob.device), advantages.to(logprob.device),
                                     clip_eps, None if ref_logprobs is None else ref_logprobs.to(logprob.device),
                                     kl_coef)
    numerator = (loss * mask).sum()
    mismatch = (logprob.detach() - gen_logprobs.to(logprob.device)).abs()
    sums = [mask.sum(), (mismatch * mask).sum(), (entropy * mask).sum(), (stats["clipped"] * mask).sum(),
            (stats["kl"] * mask).sum(), (stats["ratio"] * mask).sum()]
    den = torch.tensor(int(denominator), dtype=torch.int, device=logprob.device)
    report = {"lm loss": torch.stack([numerator.detach().clone(), den.float()]),
              "grpo": torch.stack([s.detach().float() for s in sums])}
    return numerator, den, report
