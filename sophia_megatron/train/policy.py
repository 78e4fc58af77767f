"""The GRPO update on Megatron-Core: one optimizer step on rollouts the loop hands in.

``PolicyTrainer`` is the SOPHIA ``Trainer`` (same model build, TP/PP/DP layout, distributed
optimizer, LR schedule, checkpointing, signals and metric sinks) without the packed-dataset
loader: its data are ``PolicySample`` rollouts (prompt token ids, sampled token ids, the
generator's logprob of every sampled token, the group-relative advantage, the image path).

``train_on(samples)`` packs this data-parallel rank's share of the samples (``samples[dp_rank::dp]``)
into micro-batches of at most ``micro_batch_tokens`` tokens, runs the layout's pipeline schedule
with the clipped token-level loss (``grpo_loss``), steps the optimizer once and returns the
step's metrics, among them the mean |log π_θ - log μ| of the sampled tokens: the trainer's
recomputation of the generator's logprobs (weights are synced after every update, so the first
and only forward of a step runs the very weights that generated the rollouts).

Nothing here knows about generation, rewards or vLLM (``sophia_tools.grpo`` does).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from sophia_common.log import get_logger
from sophia_megatron import engine
from sophia_megatron.train.grpo_loss import STAT_KEYS, grpo_loss
from sophia_megatron.train.trainer import Trainer, block_causal_mask, packed_seq_params

log = get_logger("sophia.grpo")


@dataclass
class PolicySample:
    """One rollout: what the generator saw and sampled, and its advantage."""

    prompt_ids: list[int]
    response_ids: list[int]
    gen_logprobs: list[float]   # the generator's log μ(y_t), one per response token
    advantage: float
    image: str | None = None    # image path, tiled as the generator tiled it
    max_tiles: int = 1

    def __post_init__(self) -> None:
        if len(self.gen_logprobs) != len(self.response_ids):
            raise ValueError(f"{len(self.response_ids)} response tokens but {len(self.gen_logprobs)} logprobs")


@dataclass(frozen=True)
class PolicySettings:
    """The loss settings of the update (``grpo`` recipe section)."""

    advantage: str = "grpo"          # grpo | dr_grpo
    clip_eps: float = 0.2
    temperature: float = 1.0         # the sampling temperature: log π is of softmax(logits / T)
    max_tokens: int = 16384          # dr_grpo's constant normaliser (per sequence)
    micro_batch_tokens: int = 8192   # tokens packed into one micro-batch (at least one sequence)
    kl_coef: float = 0.0


@dataclass
class PolicyBatch:
    tokens: Any
    position_ids: Any
    labels: Any
    loss_mask: Any
    gen_logprobs: Any
    advantages: Any
    cu_seqlens: Any
    pixel_values: Any
    sequences: int
    real_tokens: int
    ref_logprobs: Any = None    # log π_ref of the labels (last stage), when the KL term is on
    scored: Any = None          # log π of the labels from a forward-only pass (last stage)


def build_policy_batch(samples: list[PolicySample], *, pad_to: int = 1, load_pixels: bool = True) -> PolicyBatch:
    """Pack ``samples`` into one THD micro-batch: position t predicts token t+1 of its own sequence."""
    tokens, positions, labels, mask, gen, adv, lengths = [], [], [], [], [], [], []
    for s in samples:
        ids = np.asarray(s.prompt_ids + s.response_ids, dtype=np.int64)
        n, p = len(ids), len(s.prompt_ids)
        lab = np.zeros(n, dtype=np.int64)
        lab[:-1] = ids[1:]
        m = np.zeros(n, dtype=np.float32)
        m[p - 1:n - 1] = 1.0
        lp = np.zeros(n, dtype=np.float32)
        lp[p - 1:n - 1] = np.asarray(s.gen_logprobs, dtype=np.float32)
        tokens.append(ids), positions.append(np.arange(n)), labels.append(lab), mask.append(m), gen.append(lp)
        adv.append(np.full(n, s.advantage, dtype=np.float32))
        lengths.append(n)
    real = sum(lengths)
    padded = -(-real // pad_to) * pad_to
    if padded > real:  # one pseudo-sample without loss
        extra = padded - real
        for parts, fill in ((tokens, 0), (labels, 0), (mask, 0.0), (gen, 0.0), (adv, 0.0)):
            parts.append(np.full(extra, fill, dtype=parts[0].dtype))
        positions.append(np.arange(extra))
        lengths.append(extra)
    row = lambda parts: torch.from_numpy(np.concatenate(parts)).unsqueeze(0)  # noqa: E731
    pixels = _pixels(samples) if load_pixels else None
    return PolicyBatch(tokens=row(tokens), position_ids=row(positions), labels=row(labels), loss_mask=row(mask),
                       gen_logprobs=row(gen), advantages=row(adv),
                       cu_seqlens=torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32),
                       pixel_values=pixels, sequences=len(samples), real_tokens=real)


def _pixels(samples: list[PolicySample]) -> Any:
    from sophia_common.images import load_pixel_values

    tiles = [load_pixel_values(s.image, max_tiles=s.max_tiles) for s in samples if s.image]
    return torch.cat(tiles) if tiles else None


def split_micro_batches(samples: list[PolicySample], budget: int) -> list[list[PolicySample]]:
    """Consecutive groups of samples of at most ``budget`` tokens each (a longer sample stands alone)."""
    groups: list[list[PolicySample]] = [[]]
    used = 0
    for s in samples:
        n = len(s.prompt_ids) + len(s.response_ids)
        if groups[-1] and used + n > budget:
            groups.append([])
            used = 0
        groups[-1].append(s)
        used += n
    return [g for g in groups if g]


class PolicyTrainer(Trainer):
    """The Megatron side of GRPO: the SOPHIA trainer's machinery, stepping on given rollouts."""

    def __init__(self, recipe: Any, settings: PolicySettings) -> None:
        self.settings = settings
        super().__init__(recipe)

    def _build_data(self) -> None:  # rollouts come from the loop, not from a packed dataset
        self.packs_per_step = 0
        pad_to = 16 if self.recipe.fp8.recipe != "none" else 1
        self.pad_to = math.lcm(pad_to, self.pstate.tp) if self.config.sequence_parallel else pad_to
        self.reference = None
        if self.settings.kl_coef > 0:  # the frozen start policy, for the KL term
            r = self.recipe
            self.reference = engine.build_model(self.arch, self.config, self.pstate, spec=r.model.spec,
                                                vision_dtype=r.model.vision_dtype, mcore_dir=r.model.mcore_dir)
            self.reference.requires_grad_(False)

    def _scoring_forward_step(self, data_iterator: Any, model: Any) -> Any:
        mb: PolicyBatch = next(data_iterator)
        output = self._forward(model, mb)
        return output, functools.partial(self._store_logprobs, mb=mb)

    def _store_logprobs(self, output: Any, mb: PolicyBatch) -> Any:
        from sophia_megatron.train.grpo_loss import token_logprobs

        with torch.no_grad():
            logits = self.model.mask_padded_vocab(output.float() / self.settings.temperature)
            mb.scored = token_logprobs(logits, mb.labels.to(self.device)).detach()
        zero = torch.zeros((), device=self.device)
        return zero, torch.ones((), dtype=torch.int, device=self.device), {}

    def _score(self, model: Any, batches: list[PolicyBatch]) -> None:
        """``mb.scored`` = log softmax(logits / T)[label] of every micro-batch (last stage), forward only."""
        engine.forward_backward(self._scoring_forward_step, iter(batches), [model],
                                num_microbatches=len(batches), seq_length=max(mb.tokens.shape[1] for mb in batches),
                                micro_batch_size=1, forward_only=True)

    def _reference_logprobs(self, batches: list[PolicyBatch]) -> None:
        """log π_ref of every micro-batch's labels, by a forward-only pass of the frozen reference."""
        self._score(self.reference, batches)
        for mb in batches:
            mb.ref_logprobs, mb.scored = mb.scored, None

    def sampled_logprobs(self, samples: list[PolicySample]) -> list[list[float]] | None:
        """log π_θ of every response token of this data-parallel rank's share of ``samples`` (all of them
        at DP 1) at the current weights, without an update; ``None`` off the last pipeline stage."""
        batches = self.micro_batches(samples)
        self._score(self.ddp, batches)
        if not self.pstate.is_last_stage:
            return None
        out = []
        for mb in batches:
            scored, mask, bounds = mb.scored[0].cpu(), mb.loss_mask[0], mb.cu_seqlens.tolist()
            for start, end in zip(bounds[:mb.sequences], bounds[1:mb.sequences + 1], strict=True):
                out.append(scored[start:end][mask[start:end] > 0].tolist())
        return out

    def _forward(self, model: Any, mb: PolicyBatch) -> Any:
        te, dev = self.recipe.model.spec == "te", self.device
        return model(mb.tokens.to(dev), mb.position_ids.to(dev),
                     None if te else block_causal_mask(mb.cu_seqlens, mb.tokens.shape[1]).to(dev),
                     labels=None, pixel_values=None if mb.pixel_values is None else mb.pixel_values.to(dev),
                     packed_seq_params=packed_seq_params(mb.cu_seqlens) if te else None)

    def _policy_forward_step(self, data_iterator: Any, model: Any) -> Any:
        mb: PolicyBatch = next(data_iterator)
        return self._forward(model, mb), functools.partial(self._loss, mb=mb)

    def _loss(self, output: Any, mb: PolicyBatch) -> Any:
        st = self.settings
        logits = self.model.mask_padded_vocab(output.float() / st.temperature)
        denominator = (mb.sequences * st.max_tokens if st.advantage == "dr_grpo"
                       else int(mb.loss_mask.sum()))
        return grpo_loss(logits, labels=mb.labels.to(self.device), loss_mask=mb.loss_mask,
                         gen_logprobs=mb.gen_logprobs, advantages=mb.advantages, denominator=denominator,
                         clip_eps=st.clip_eps, ref_logprobs=mb.ref_logprobs, kl_coef=st.kl_coef)

    def micro_batches(self, samples: list[PolicySample]) -> list[PolicyBatch]:
        mine = samples[self.pstate.dp_rank::self.pstate.dp]
        return [build_policy_batch(group, pad_to=self.pad_to, load_pixels=self.pstate.is_first_stage)
                for group in split_micro_batches(mine, self.settings.micro_batch_tokens)]

    def _reduced(self, reports: list[dict[str, Any]], key: str, width: int) -> list[float]:
        """Sum of ``report[key]`` over micro-batches and data-parallel ranks, known on every rank."""
        total = torch.zeros(width, dtype=torch.float64, device=self.device)
        if self.pstate.is_last_stage and self.pstate.tp_rank == 0:
            for report in reports:
                total += report[key].to(self.device, torch.float64)
        dist.all_reduce(total)
        return total.tolist()

    def train_on(self, samples: list[PolicySample]) -> dict[str, Any]:
        """One optimizer step on ``samples`` (the same list on every rank); returns the step's metrics."""
        if len(samples) < self.pstate.dp:
            raise ValueError(f"{len(samples)} samples cannot feed {self.pstate.dp} data-parallel ranks")
        started = time.perf_counter()
        batches = self.micro_batches(samples)
        if self.reference is not None:
            self._reference_logprobs(batches)
        self.optimizer.zero_grad()
        reports = engine.forward_backward(self._policy_forward_step, iter(batches), [self.ddp],
                                          num_microbatches=len(batches),
                                          seq_length=max(mb.tokens.shape[1] for mb in batches), micro_batch_size=1)
        numerator, denominator = self._reduced(reports, "lm loss", 2)
        sums = dict(zip(STAT_KEYS, self._reduced(reports, "grpo", len(STAT_KEYS)), strict=True))
        loss = numerator / denominator if denominator else float("nan")
        applied, grad_norm = engine.optimizer_step(self.optimizer) if math.isfinite(loss) else (False, None)
        lr = self.optimizer.param_groups[0]["lr"]
        if applied:
            self.scheduler.step(increment=1)
        else:
            log.warning("step %d: update skipped (loss %s)", self.step, loss)
        self.step += 1
        tokens = max(sums["tokens"], 1.0)
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "skipped": not applied,
                "loss_tokens": sums["tokens"], "mismatch": sums["abs_mismatch"] / tokens,
                "entropy": sums["entropy"] / tokens, "clip_fraction": sums["clipped"] / tokens,
                "ratio_mean": sums["ratio"] / tokens, "kl": sums["kl"] / tokens if self.settings.kl_coef else None,
                "train_seconds": time.perf_counter() - started}

    def save(self) -> None:
        """The trainer's checkpoint; an optimizer that never stepped (every group dropped so far) gets
        the zero Adam state a first step would start from, which Megatron needs to save it."""
        from sophia_megatron.train import checkpointing

        checkpointing._seed_empty_adam_state(self.optimizer)
        super().save()

    def no_update(self) -> dict[str, Any]:
        """Count a step whose every group was dropped: no gradient, no optimizer step."""
        self.step += 1
        return {"loss": None, "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": None, "skipped": True,
                "loss_tokens": 0.0, "mismatch": None, "entropy": None, "clip_fraction": None,
                "ratio_mean": None, "kl": None, "train_seconds": 0.0}
