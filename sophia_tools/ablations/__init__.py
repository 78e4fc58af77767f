"""``make ablations``: the paper's selection ablations, reproduced on the demo's synthetic task.

    python -m sophia_tools.ablations [--workdir .ablations] [--smoke]

Question answered: do the caption reward (Eq. 5-6, threshold α) and the shortest-correct rule
matter? The paper (Table 5, InternVL2.5-38B, mean of four benchmarks) finds
Random 51.53 < w/o caption reward 53.54 < w/o shortest 54.74 < SOPHIA 55.13, and Keep-2 about
equal to Keep-1 (Table A5). Here every arm trains the same warmed-up tiny policy from **one**
rollout store, with only the selection setting changed:

==================  ===========================================================================
arm                 selection (``sophia-rollout select`` overrides)
==================  ===========================================================================
sophia              Keep-1: the shortest correct trajectory whose caption reward is >= α
no_shortest         a random correct trajectory of a caption with reward >= α (``no_shortest``)
no_caption_reward   the shortest correct trajectory, whatever its caption (α = 0)
random              a random trajectory of the question, reward ignored (``random``)
keep2               the two shortest correct trajectories of captions with reward >= α
==================  ===========================================================================

Same for every arm: the starting checkpoint (the warmed-up policy), the number of optimizer steps,
the packs per step (packs of the same token budget), the learning-rate schedule, and the held-out
questions. Per seed s the random draws of the selection (``rollout.seed``), the training data order
(``data.seed``) and the evaluation's sampling (temperature 1.0, top-p 0.8, the paper's setting) change.

Stages (each resumable, a finished one is reused; see :mod:`sophia_tools.ablations.__main__`):
the demo's fixtures, task, warm-ups and conversion (:mod:`sophia_tools.demo`), one rollout
(caption -> reason -> score, no selection) into ``store/``, the warmed-up policy's own pass@1
(``baseline``), then per arm and seed under ``arms/ARM/seedS/``: a copy of the store, ``select``,
``pack``, the update on two Megatron ranks, export, evaluation; last the report
(``ablations.json``, ``ablations.txt``, ``ablations.png``, :mod:`sophia_tools.ablations.report`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sophia_tools.demo import FAST, FULL, DemoSettings


@dataclass(frozen=True)
class Arm:
    """One selection setting: its name, the paper's label and the ``sophia-rollout select`` overrides."""

    name: str
    label: str
    ablation: str
    keep_k: int

    def overrides(self, seed: int) -> list[str]:
        return [f"rollout.ablation={self.ablation}", f"rollout.keep_k={self.keep_k}", f"rollout.seed={seed}"]


ARMS: tuple[Arm, ...] = (
    Arm("random", "Random", "random", 1),
    Arm("no_caption_reward", "w/o caption reward", "no_caption_reward", 1),
    Arm("no_shortest", "w/o shortest", "no_shortest", 1),
    Arm("sophia", "SOPHIA (Keep-1)", "none", 1),
    Arm("keep2", "Keep-2", "none", 2),
)
PAPER_ORDER = ("random", "no_caption_reward", "no_shortest", "sophia")
"""The paper's ordering, worst to best (Table 5)."""


@dataclass(frozen=True)
class AblationSettings:
    """Sizes of one ablation run; ``shared`` sizes the demo stages (task, warm-ups, rollout)."""

    shared: DemoSettings = field(default_factory=lambda: replace(
        FULL, images=160, warmup_images=640, eval_images=200, mix_samples=0, eval_temperature=1.0, eval_top_p=0.8))
    seeds: tuple[int, ...] = (0, 1, 2)  # per seed: selection draws, data order, evaluation sampling
    steps: int = 90  # optimizer steps of every arm (30 and 60 left every arm near 0: docs/ABLATIONS.md)
    packs_per_step: int = 4  # packs per optimizer step (about 3,700 tokens: ~8 samples of ~470 tokens)
    pack_tokens: int = 1024  # pack.max_seq_len of the arms' packs (see below)
    arms: tuple[str, ...] = tuple(arm.name for arm in ARMS)

    # Why 640 warm-up images (the demo: 160): the same 150 warm-up steps see each image about twice
    # instead of about 7 times, and the warmed-up captioner then leaves the colour out of many captions
    # (136 of 320 on colour questions, probe of 2026-12-01; 21 of 320 with 160 images), so the caption
    # reward has vague captions to filter on the attribute the policy reads. Measured, the effect on
    # the selection is small (w/o caption reward trains on 7.8 % guesses; docs/ABLATIONS.md).

    # Why 1024-token packs: on CPU, Megatron's local attention computes the whole pack x pack score
    # matrix under the block-diagonal mask, so the longer the pack the more of it is wasted on pairs
    # of samples that cannot see each other. Samples here are ~470 tokens (256 image tokens); 1024
    # holds two, with no sample dropped. Measured on the 2-core machine: 3,200 tok/s at 2 x 2048,
    # 3,730 at 4 x 1024, 3,990 at 8 x 512 (which would drop the rare sample over 512 tokens).

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["seeds"], record["arms"] = list(self.seeds), list(self.arms)
        return record


FULL_ABLATIONS = AblationSettings()
SMOKE_ABLATIONS = AblationSettings(  # the reasoner warmed up enough to finish its trajectories, so arms select
    shared=replace(FAST, images=6, eval_images=4, mix_samples=0, eval_temperature=1.0, eval_top_p=0.8,
                   reasoner_samples=400, reasoner_steps=60, reasoner_max_tokens=96),
    seeds=(0,), steps=2)


def arm_named(name: str) -> Arm:
    for arm in ARMS:
        if arm.name == name:
            return arm
    raise KeyError(f"no ablation arm {name!r}; arms: {', '.join(arm.name for arm in ARMS)}")
