"""SOPHIA's rewards and trajectory selection (docs/ALGORITHM.md §1.1, Eq. 5 and 6) and its ablations, as pure functions.

* Eq. 4 (outcome reward R(y) ∈ {0, 1}) is the verifier's ``Result.correct`` (``rollout.verifier``);
  a trajectory cut at the token limit scores 0.
* Eq. 5, ``caption_reward``: R(c⁽ᵏ⁾) = (1/N) Σₙ R(y⁽ᵏ'ⁿ⁾), the mean outcome of a caption's trajectories.
* Eq. 6, ``select_for_question`` / ``dataset_rewards``: r(I, q, y⁽ᵏ'ⁿ⁾) = 1 iff R(y) = 1, R(c⁽ᵏ⁾) ≥ α
  (inclusive) and y is among the Keep-k shortest trajectories of (I, q) that satisfy both; else 0.
  "Shortest" is the trajectory's token count; ties go to the lower caption index k, then n.

Ablations (``SelectionSettings.ablation``):

* ``random`` — ``keep_k`` trajectories of the pair drawn at random, rewards ignored (weight 1),
  among those that finished: a trajectory cut at the token limit (``finish_reason = length``)
  or one whose think block never closed is not a trajectory to imitate, so it is not drawn;
* ``no_caption_reward`` — α = 0: every correct trajectory is eligible, whatever its caption;
* ``no_shortest`` — ``keep_k`` eligible trajectories drawn at random instead of the shortest.

Random draws use a generator seeded by (seed, question id) alone, so a question's selection does
not depend on which other questions are selected with it, in which order, or in which shard.
The caption reward is a mean of 0/1 values; ``alpha`` is compared with a 1e-9 tolerance so that,
e.g., 7 of 10 counts as ≥ 0.7 despite binary floating point.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Ablation = Literal["none", "random", "no_caption_reward", "no_shortest"]
ABLATIONS: tuple[str, ...] = ("none", "random", "no_caption_reward", "no_shortest")
ALPHA_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ScoredTrajectory:
    """What selection needs to know about one trajectory y⁽ᵏ'ⁿ⁾ of question ``id``."""

    id: str
    k: int
    n: int
    correct: bool
    caption_reward: float
    num_tokens: int
    truncated: bool = False
    """Cut at the token limit (``finish_reason = length``)."""
    unfinished: bool = False
    """Opened a think block and never closed it (scored ``unfinished_think``)."""

    @property
    def key(self) -> tuple[str, int, int]:
        return self.id, self.k, self.n


@dataclass(frozen=True)
class SelectionSettings:
    alpha: float = 0.75
    keep_k: int = 1
    ablation: Ablation = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.keep_k < 1:
            raise ValueError(f"keep_k must be >= 1, got {self.keep_k}")
        if self.ablation not in ABLATIONS:
            raise ValueError(f"ablation must be one of {ABLATIONS}, got {self.ablation!r}")

    @property
    def effective_alpha(self) -> float:
        return 0.0 if self.ablation == "no_caption_reward" else self.alpha


def caption_reward(outcomes: Sequence[bool | int]) -> float:
    """Eq. 5: the mean outcome reward of one caption's trajectories."""
    if not outcomes:
        raise ValueError("a caption reward needs at least one scored trajectory")
    return sum(1 for outcome in outcomes if outcome) / len(outcomes)


def caption_rewards(outcomes: Iterable[tuple[str, int, bool | int]]) -> dict[tuple[str, int], float]:
    """Eq. 5 for many captions at once: ``(id, k, correct)`` per trajectory -> reward per ``(id, k)``."""
    grouped: dict[tuple[str, int], list[bool | int]] = defaultdict(list)
    for item_id, k, correct in outcomes:
        grouped[(item_id, k)].append(correct)
    return {caption: caption_reward(values) for caption, values in grouped.items()}


def is_eligible(trajectory: ScoredTrajectory, settings: SelectionSettings) -> bool:
    """Correct, and its caption's reward reaches α (inclusive; α = 0 under ``no_caption_reward``)."""
    return trajectory.correct and trajectory.caption_reward + ALPHA_TOLERANCE >= settings.effective_alpha


def _shortest_first(trajectory: ScoredTrajectory) -> tuple[int, int, int]:
    return trajectory.num_tokens, trajectory.k, trajectory.n


def _draw(pool: list[ScoredTrajectory], count: int, settings: SelectionSettings) -> list[ScoredTrajectory]:
    ordered = sorted(pool, key=lambda trajectory: (trajectory.k, trajectory.n))
    rng = random.Random(f"{settings.seed}:{ordered[0].id}")
    return rng.sample(ordered, min(count, len(ordered)))


def select_for_question(trajectories: Sequence[ScoredTrajectory],
                        settings: SelectionSettings) -> list[ScoredTrajectory]:
    """The trajectories of one (image, question) that get r = 1 (Eq. 6 or the ablation), best first."""
    if not trajectories:
        return []
    if len({trajectory.id for trajectory in trajectories}) != 1:
        raise ValueError("select_for_question takes the trajectories of one question")
    if settings.ablation == "random":
        finished = [t for t in trajectories if not (t.truncated or t.unfinished)]
        return _draw(finished, settings.keep_k, settings) if finished else []
    eligible = [trajectory for trajectory in trajectories if is_eligible(trajectory, settings)]
    if not eligible:
        return []
    if settings.ablation == "no_shortest":
        return _draw(eligible, settings.keep_k, settings)
    return sorted(eligible, key=_shortest_first)[:settings.keep_k]


def select(trajectories: Iterable[ScoredTrajectory], settings: SelectionSettings) -> list[ScoredTrajectory]:
    """``select_for_question`` over every question, in order of first appearance."""
    by_question: dict[str, list[ScoredTrajectory]] = defaultdict(list)
    for trajectory in trajectories:
        by_question[trajectory.id].append(trajectory)
    return [chosen for group in by_question.values() for chosen in select_for_question(group, settings)]


def dataset_rewards(trajectories: Iterable[ScoredTrajectory],
                    settings: SelectionSettings) -> dict[tuple[str, int, int], float]:
    """Eq. 6 as a weight for every trajectory: 1.0 for the selected ones, 0.0 for the rest."""
    trajectories = list(trajectories)
    chosen = {trajectory.key for trajectory in select(trajectories, settings)}
    return {trajectory.key: 1.0 if trajectory.key in chosen else 0.0 for trajectory in trajectories}
