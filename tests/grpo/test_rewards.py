"""The GRPO reward plug-ins on hand-made responses: outcome, generative judge, SRPO.

The judge reward is the project's one ``GenerativeJudge`` talking real HTTP to ``StandInJudgeServer``
(a stand-in for the served judge model, shared with the score stage's tests); the rule verifier is
the real one."""

from __future__ import annotations

import math

import pytest

from rollout.config import JudgeConfig
from rollout.rl_rewards import (
    RewardSettings,
    Scored,
    SrpoSettings,
    brevity,
    make_reward,
    reflection_parts,
    srpo_rewards,
)
from rollout.verifier import verify_batch
from tests.rollout.test_score_judge import StandInJudgeServer


def verify(items):
    return verify_batch(items)


def test_outcome_reward_is_the_verifier_and_truncation_scores_zero():
    reward = make_reward(RewardSettings(kind="outcome"), verify)
    got = reward([Scored("q", "3", "<think>count</think> There are \\boxed{3} circles."),
                  Scored("q", "3", "The answer is \\boxed{4}."),
                  Scored("q", "3", "The answer is \\boxed{3}.", truncated=True)])
    assert [(r.reward, r.correct) for r in got] == [(1.0, True), (0.0, False), (0.0, False)]
    assert got[2].reason == "truncated"


@pytest.fixture
def judge_server():
    with StandInJudgeServer() as server:
        yield server


def _judge_reward(server):
    """The GRPO judge reward exactly as ``sophia-train train.mode=grpo`` builds it from ``grpo.judge``."""
    config = JudgeConfig(model="stand-in-judge", base_url=server.base_url, retries=0)
    return make_reward(RewardSettings(kind="judge", judge=config), verify)


def test_judge_is_not_asked_about_answers_the_rules_accepted(judge_server):
    got = _judge_reward(judge_server)([
        Scored("How many?", "42", "Six sevens: \\boxed{42}."),                      # rule-positive: not sent
        Scored("How many?", "42", "It is forty-two, so \\boxed{\\text{forty-two}}."),  # mismatch, judge says 1
        Scored("How many?", "42", "I get \\boxed{41}.")])                            # mismatch, judge says 0
    assert [(r.reward, r.correct, r.reason) for r in got] == [
        (1.0, True, "exact"), (1.0, True, "judge"), (0.0, False, "mismatch")]
    assert len(judge_server.prompts) == 2
    assert "Question: How many?" in judge_server.prompts[0] and "Reference answer: 42" in judge_server.prompts[0]
    assert "Six sevens" not in "".join(judge_server.prompts)


@pytest.mark.parametrize("response,gold,reason,truncated", [
    ("It is forty-two, so \\boxed{42}.", "42, 43", "structure", False),               # one value of several
    ("forty-two or forty-one: \\boxed{41} and \\boxed{42}", "42", "ambiguous", False),  # boxing two candidates
    ("<think>so it is forty-two \\boxed{42}", "42", "unfinished_think", False),        # never finished thinking
    ("It is forty-two, so \\boxed{\\text{forty-two}}.", "42", "truncated", True),     # cut at max_tokens
])
def test_judge_is_not_asked_where_the_rules_are_sure(judge_server, response, gold, reason, truncated):
    """The stand-in would say 1 to each of these ("forty-two" is in every one): asking it would reopen
    the reward hacks (answer a part of the gold, hedge) the rule verifier closes."""
    got = _judge_reward(judge_server)([Scored("How many?", gold, response, truncated)])
    assert [(r.reward, r.correct, r.reason) for r in got] == [(0.0, False, reason)]
    assert judge_server.prompts == []


def _reflective(first: str, final: str, think_words: int, reflection_words: int) -> str:
    return (f"<think>{' '.join(['step'] * think_words)}</think> first \\boxed{{{first}}} "
            f"<reflection>{' '.join(['check'] * reflection_words)}</reflection> final \\boxed{{{final}}}")


def test_srpo_reflection_effect_and_brevity():
    settings = SrpoSettings()
    # First think 10 words; whole response ~2x => brevity ~1 (T_target = 20 words, T_max = 25).
    fix = _reflective("4", "3", 10, 5)
    spoil = _reflective("3", "4", 10, 5)
    keep = _reflective("3", "3", 10, 5)
    plain = "<think>step step</think> \\boxed{3}"
    got = srpo_rewards([Scored("q", "3", fix), Scored("q", "3", spoil), Scored("q", "3", keep),
                        Scored("q", "3", plain)], verify, settings)
    length = len(fix.split())
    f_len = brevity(length, 10, settings)
    assert 0.5 < f_len <= 1.0
    assert got[0].reward == pytest.approx(1.0 + 0.5 + 0.1 * f_len) and got[0].correct
    assert got[1].reward == pytest.approx(0.0 - 0.5 + 0.1 * f_len) and not got[1].correct
    assert got[2].reward == pytest.approx(1.0 + 0.25 + 0.1 * f_len)
    assert got[3].reward == 1.0  # no reflection block: the task reward only


def test_srpo_brevity_shape_and_parts():
    s = SrpoSettings()
    assert brevity(20, 10, s) == pytest.approx(1.0)              # at T_target = 2x
    assert brevity(25, 10, s) == pytest.approx(math.exp(-1))   # at T_max: e^-1
    assert brevity(26, 10, s) == 0.0                             # beyond T_max
    assert brevity(15, 10, s) < brevity(18, 10, s) < 1.0         # shorter than the target decays too
    assert reflection_parts("<reflection>r</reflection><think>t</think>") is None  # reflection before think
    think, first, reflection, final = reflection_parts(_reflective("1", "2", 1, 1))
    assert think == "step" and "\\boxed{1}" in first and reflection == "check" and "\\boxed{2}" in final
