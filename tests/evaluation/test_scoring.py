"""Scoring: rule extraction + the project's verifier, and the LLM extractor / judge over HTTP.

The LLM path talks through the real ``rollout.openai_client`` to a local HTTP server that stands in
for the served Qwen2.5-72B-Instruct (a stand-in: no such model runs here). It answers the
extraction prompt by copying the response's ``\\boxed{}`` and the judge prompt by comparing the
reference and student lines, so the verdicts are known; it also records the prompts it got.
"""

from __future__ import annotations

import re

import pytest

from evaluation.config import EvalConfig, LLMScorerConfig
from evaluation.formats import Question
from evaluation.scoring import Item, Scorer, fill
from rollout.verifier import extract_answer
from tests.stand_in_server import StandInServer, chat_reply, prompt_of


def question(answers=("3",), choices=None, judged=False, text="What is 1+2?") -> Question:
    return Question(benchmark="b", id="q", text=text, question=text, answers=tuple(answers), choices=choices,
                    category="all", images=(), judged=judged, location="test")


class StandInJudge(StandInServer):
    """Extraction prompts: the response's ``\\boxed{}``; judge prompts: 1 when the student's answer is
    one of the references, an unreadable reply for 7, a full-width colon for 6; 400 on FAIL-THIS."""

    models = ({"id": "stand-in-judge"},)

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        prompt = prompt_of(body)
        real = prompt.split("Now the real one.")[-1]
        if "FAIL-THIS" in real:
            return 400, {"error": {"message": "refused"}}
        if "Extracted answer" in prompt:
            boxed = re.search(r"\\boxed\{([^}]*)\}", real)
            return chat_reply(f"Extracted answer: {boxed.group(1) if boxed else 'None'}", 5)
        reference = re.search(r"Reference answer: (.*)", real).group(1).split(" or ")
        student = re.search(r"Student's answer: (.*)", real).group(1).strip()
        text = f"The student wrote {student}.\nJudgement: {int(student in reference)}"
        if student == "7":
            text = "I cannot tell."
        elif student == "6":
            text = "判断 Judgement：1"  # a full-width colon
        return chat_reply(text, 5)


@pytest.fixture
def judge():
    with StandInJudge() as server:
        yield server


def test_rules_scoring():
    """Correct by value, by option text, by any accepted gold; truncated and unanswered score 0 with reasons."""
    items = [Item(question(), "So \\boxed{3}.", False),
             Item(question(("B",), ("red", "green")), "The answer is green.", False),
             Item(question(("1", "one")), "\\boxed{one}", False),
             Item(question(), "\\boxed{3}", True),
             Item(question(), "<think>still thinking", False),
             Item(question(), "\\boxed{4}", False)]
    with Scorer(EvalConfig()) as scorer:
        verdicts = scorer.score(items)
    assert [v.correct for v in verdicts] == [True, True, True, False, False, False]
    # no answer: the verifier's own reason for it (its wording is the verifier's)
    assert [v.reason for v in verdicts[3:5]] == ["truncated", extract_answer(items[4].response).how]
    assert {v.method for v in verdicts} == {"rules-extract+rules"}


def test_llm_extract_and_judge(judge):
    """Judged benchmarks go to the judge; others are verified by rules on the LLM-extracted answer."""
    config = EvalConfig(extract="llm", judge="llm", llm=LLMScorerConfig(base_url=judge.base_url))
    items = [Item(question(judged=True), "I get \\boxed{3}", False),            # judge says 1
             Item(question(judged=True), "I get \\boxed{5}", False),            # judge says 0
             Item(question(("0.5",)), "so \\boxed{1/2}", False),                 # rules: 1/2 = 0.5
             Item(question(), "no boxed answer here", False),                   # extractor: None
             Item(question(text="FAIL-THIS"), "\\boxed{3}", False)]             # server refuses: retry later
    with Scorer(config) as scorer:
        verdicts = scorer.score(items)
        assert scorer.fingerprint(items[0].question) != scorer.fingerprint(items[2].question)
    assert [v and (v.correct, v.method) for v in verdicts] == [
        (True, "llm-extract+llm-judge"), (False, "llm-extract+llm-judge"), (True, "llm-extract+rules"),
        (False, "llm-extract+rules"), None]
    assert [verdicts[0].reason, verdicts[1].reason, verdicts[3].reason] == ["judge", "judge", "no_answer"]
    assert verdicts[2].extracted == "1/2"
    extraction = next(p for p in judge.prompts if "I get \\boxed{3}" in p)
    assert extraction.rstrip().endswith("Question: What is 1+2?\nResponse: I get \\boxed{3}")
    assert any("Reference answer: 3\nStudent's answer: 5" in p for p in judge.prompts)


def test_llm_scoring_needs_a_server():
    with pytest.raises(ValueError, match="need llm.base_url"):
        EvalConfig(judge="llm")


def test_fill_keeps_braces_of_values():
    assert fill("Q: {question} R: {response}", {"question": "{response}", "response": "\\frac{1}{2}"}) == \
        "Q: {response} R: \\frac{1}{2}"


def test_the_llm_judge_is_the_rollout_judge(judge):
    """The evaluation judges through ``rollout.verifier.judge`` (one parser for both): an unreadable reply is
    ``judge_unparsable`` (scored wrong), a full-width colon is read; bug caught: a second parser drifting."""
    from rollout.verifier.judge import GenerativeJudge

    config = EvalConfig(extract="llm", judge="llm", llm=LLMScorerConfig(base_url=judge.base_url))
    items = [Item(question(judged=True), "\\boxed{7}", False), Item(question(judged=True), "\\boxed{6}", False)]
    with Scorer(config) as scorer:
        assert isinstance(scorer.judge, GenerativeJudge)
        verdicts = scorer.score(items)
    assert [(v.correct, v.reason) for v in verdicts] == [(False, "judge_unparsable"), (True, "judge")]
