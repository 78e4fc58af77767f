"""GRPO rewards as plug-ins (recipe key ``grpo.reward``): ``outcome``, ``judge`` and ``srpo``.

Every plug-in scores a list of ``Scored`` items (question, gold answer, response, whether the
response was cut at the token limit) and returns one ``Reward`` per item: the scalar reward the
advantages are computed from, the binary outcome (the pass rate groups are filtered on) and why.

* ``outcome`` (default) — the project's rule verifier (``rollout.verifier``): 1 if the final
  answer is equivalent to the gold one, else 0; a truncated response scores 0.
* ``judge`` — the rule verifier, then the project's one generative judge
  (``rollout.verifier.judge.GenerativeJudge``, settings ``grpo.judge`` = ``rollout.config.JudgeConfig``):
  a served instruction model (any OpenAI-compatible server, e.g. ``vllm serve``) re-judges only the
  rule negatives the rules could have missed (``mismatch``, ``unparsable``, ``no_answer`` …). Verdicts
  the rules are sure of by design (``structure``, ``ambiguous``, ``choice``, ``unfinished_think``,
  ``truncated``) never reach it, so the policy cannot win reward by hedging or by answering a part of
  the gold. A ``Judgement: 1`` scores 1 with the reason ``judge``; a ``0``, an unreadable reply or a
  failed request leaves the rules' 0.
* ``srpo`` — SRPO's reflection-aware reward (arXiv 2506.01713): for a response
  ``<think>T1</think> A1 <reflection>R</reflection> A2`` the task reward of the final answer A2
  plus a reflection reward ``I_eff + alpha * f_len(L)``: I_eff rewards a reflection that fixes a
  wrong first answer (+0.5), keeps a right one (+0.25), leaves a wrong one wrong (-0.25) or breaks a
  right one (-0.5); the brevity term ``f_len(L) = exp(-|L - T_target| / (T_max - T_target))`` for
  a response of L tokens, 0 beyond T_max, with T_target = 2x and T_max = 2.5x the first think's
  length, alpha = 0.1. A response without a reflection block gets the task reward only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from rollout.config import JudgeConfig
from rollout.verifier.judge import GenerativeJudge, from_config
from sophia_common.config import doc
from sophia_common.log import get_logger

log = get_logger("sophia.rollout.rl_rewards")
REWARDS = ("outcome", "judge", "srpo")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_REFLECTION = re.compile(r"<reflection>(.*?)</reflection>", re.DOTALL)


@dataclass(frozen=True)
class Scored:
    """One response to score."""

    question: str
    answer: str
    response: str
    truncated: bool = False
    num_tokens: int | None = None  # the response's length in tokens (SRPO's brevity term)


@dataclass(frozen=True)
class Reward:
    reward: float
    correct: bool
    reason: str


@dataclass
class SrpoSettings:
    """SRPO's reflection reward (``grpo.srpo``)."""

    alpha: float = doc("weight of the brevity term f_len (SRPO: 0.1)", 0.1)
    target_ratio: float = doc("T_target = this x the first think's length (SRPO: 2)", 2.0)
    max_ratio: float = doc("T_max = this x the first think's length (SRPO: 2.5)", 2.5)
    effect: list[float] = doc("I_eff for wrong->right, right->right, wrong->wrong, right->wrong",
                              [0.5, 0.25, -0.25, -0.5])


@dataclass
class RewardSettings:
    kind: Literal["outcome", "judge", "srpo"] = "outcome"
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    srpo: SrpoSettings = field(default_factory=SrpoSettings)


# ---------------------------------------------------------------- outcome


def outcome_rewards(items: Sequence[Scored], verify: Callable[[list[dict]], list]) -> list[Reward]:
    """The rule verifier's binary reward; ``verify`` is ``VerifierPool.verify_batch``."""
    results = verify([{"response": i.response, "answer": i.answer, "truncated": i.truncated} for i in items])
    return [Reward(1.0 if r.correct else 0.0, bool(r.correct), r.reason) for r in results]


# ---------------------------------------------------------------- judge


def judge_rewards(items: Sequence[Scored], verify: Callable[[list[dict]], list],
                  judge: GenerativeJudge) -> list[Reward]:
    """The rule verifier first, then ``judge.rejudge``: only rule negatives the rules could have missed
    are asked (never ``structure``, ``ambiguous``, ``choice``, ``unfinished_think``, ``truncated``);
    a ``Judgement: 1`` makes the answer correct with the reason ``judge``."""
    answers = [{"response": i.response, "answer": i.answer, "question": i.question, "truncated": i.truncated}
               for i in items]
    results = judge.rejudge(answers, verify(answers))
    if judge.last_failed:
        log.warning("judge: %d request(s) to %s failed; their rule verdicts stand", len(judge.last_failed),
                    judge.settings.base_url)
    return [Reward(1.0 if r.correct else 0.0, bool(r.correct), r.reason) for r in results]


# ---------------------------------------------------------------- SRPO


def reflection_parts(response: str) -> tuple[str, str, str, str] | None:
    """(first think, first-answer text, reflection, final-answer text), or ``None`` without a reflection."""
    reflection = _REFLECTION.search(response)
    think = _THINK.search(response)
    if reflection is None or think is None or think.end() > reflection.start():
        return None
    return (think.group(1), response[:reflection.start()], reflection.group(1),
            response[reflection.end():])


def brevity(length: float, first_think: float, settings: SrpoSettings) -> float:
    """f_len: 1 at T_target, decaying exponentially, 0 beyond T_max (lengths in the same unit)."""
    target, cap = settings.target_ratio * first_think, settings.max_ratio * first_think
    if first_think <= 0 or length > cap:
        return 0.0
    return math.exp(-abs(length - target) / (cap - target))


def effect(first_correct: bool, final_correct: bool, settings: SrpoSettings) -> float:
    fix, keep, miss, spoil = settings.effect
    if final_correct:
        return keep if first_correct else fix
    return spoil if first_correct else miss


def srpo_rewards(items: Sequence[Scored], verify: Callable[[list[dict]], list], settings: SrpoSettings,
                 count_tokens: Callable[[str], int] = lambda text: len(text.split())) -> list[Reward]:
    """Task reward of the final answer plus SRPO's reflection reward (module doc)."""
    parts = [reflection_parts(i.response) for i in items]
    finals = outcome_rewards([Scored(i.question, i.answer, p[3] if p else i.response, i.truncated)
                              for i, p in zip(items, parts, strict=True)], verify)
    reflective = [(index, p) for index, p in enumerate(parts) if p is not None]
    firsts = outcome_rewards([Scored(items[k].question, items[k].answer, p[1]) for k, p in reflective], verify)
    out = [Reward(f.reward, f.correct, f.reason) for f in finals]
    for (index, p), first in zip(reflective, firsts, strict=True):
        item, final = items[index], finals[index]
        length = item.num_tokens if item.num_tokens is not None else count_tokens(item.response)
        bonus = effect(first.correct, final.correct, settings) + settings.alpha * brevity(
            length, count_tokens(p[0]), settings)
        out[index] = Reward(final.reward + bonus, final.correct, f"{final.reason}+reflection")
    return out


def make_reward(settings: RewardSettings, verify: Callable[[list[dict]], list],
                count_tokens: Callable[[str], int] | None = None) -> Callable[[Sequence[Scored]], list[Reward]]:
    """The plug-in ``settings.kind`` names, bound to its settings and the verifier."""
    if settings.kind == "outcome":
        return lambda items: outcome_rewards(items, verify)
    if settings.kind == "judge":
        judge = from_config(settings.judge, None, section="grpo.judge")  # no verdict cache: every step's rollouts are new
        return lambda items: judge_rewards(items, verify, judge)
    if settings.kind == "srpo":
        counter = count_tokens or (lambda text: len(text.split()))
        return lambda items: srpo_rewards(items, verify, settings.srpo, counter)
    raise ValueError(f"grpo.reward must be one of {REWARDS}, got {settings.kind!r}")
