"""The GRPO reward plug-ins on hand-made responses: outcome, generative judge (over real HTTP), SRPO."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from rollout.rl_rewards import (
    JudgeSettings,
    RewardSettings,
    Scored,
    SrpoSettings,
    brevity,
    judge_rewards,
    make_reward,
    parse_verdict,
    reflection_parts,
    srpo_rewards,
)
from rollout.verifier import verify_batch


def verify(items):
    return verify_batch(items)


def test_outcome_reward_is_the_verifier_and_truncation_scores_zero():
    reward = make_reward(RewardSettings(kind="outcome"), verify)
    got = reward([Scored("q", "3", "<think>count</think> There are \\boxed{3} circles."),
                  Scored("q", "3", "The answer is \\boxed{4}."),
                  Scored("q", "3", "The answer is \\boxed{3}.", truncated=True)])
    assert [(r.reward, r.correct) for r in got] == [(1.0, True), (0.0, False), (0.0, False)]
    assert got[2].reason == "truncated"


@pytest.mark.parametrize("reply,expected", [
    ("The student says 3.\nJudgement: Yes", True),
    ("Judgement: No", False),
    ("judgment: **yes**", True),
    ("Judgement: No\n...on reflection...\nJudgement: Yes", True),   # the last verdict wins
    ("I think they are equal.", None),
])
def test_parse_verdict(reply, expected):
    assert parse_verdict(reply) is expected


class _StubJudge(BaseHTTPRequestHandler):
    """Stands in for a served judge model (vllm serve) at the HTTP level: says Yes iff the
    student response contains the word 'three'; records every prompt."""

    prompts: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        type(self).prompts.append(prompt)
        student = prompt.split("Student response:", 1)[1]
        content = "Judgement: Yes" if "three" in student else "Judgement: No"
        data = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_judge_only_sees_rule_negatives_over_http():
    server = HTTPServer(("127.0.0.1", 0), _StubJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _StubJudge.prompts = []
    try:
        settings = JudgeSettings(url=f"http://127.0.0.1:{server.server_port}/v1", model="judge", retries=1)
        got = judge_rewards([Scored("How many?", "3", "\\boxed{3}"),            # rule-positive: no request
                             Scored("How many?", "3", "I count \\boxed{three apples}"),  # rule-negative, judge says yes
                             Scored("How many?", "3", "\\boxed{4}")], verify, settings)
    finally:
        server.shutdown()
    assert [(r.reward, r.correct, r.reason) for r in got] == [
        (1.0, True, "exact"), (1.0, True, "judge_yes"), (0.0, False, "judge_no")]
    assert len(_StubJudge.prompts) == 2 and "Reference answer: 3" in _StubJudge.prompts[0]


def test_judge_needs_a_server():
    with pytest.raises(ValueError, match="grpo.judge.url"):
        judge_rewards([Scored("q", "3", "x")], verify, JudgeSettings())


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
