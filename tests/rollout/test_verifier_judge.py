"""The optional generative judge: which results it re-judges, prompt, parsing, cache, timeouts, a down server.

Fast tests use ``ScriptedJudgeServer``, a mock OpenAI-compatible server (``tests.stand_in_server``: a
real HTTP server on 127.0.0.1 whose replies are scripted by the prompt), because what is tested is the plumbing, not a
model. The slow test serves the tiny reasoner with a real vLLM server and runs the judge against it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rollout.local_server import free_port
from rollout.verifier import Result, verify_batch
from rollout.verifier.judge import GenerativeJudge, JudgeSettings, parse_judgement
from sophia_common.cli import UserError
from tests.stand_in_server import StandInServer, chat_reply, prompt_of

REPO = Path(__file__).resolve().parents[2]
PROMPT = str(REPO / "configs" / "prompts" / "judge.txt")


class ScriptedJudgeServer(StandInServer):
    """Mock judge server: replies ``Judgement: 1`` when the reference answer is 42, ``maybe`` for 43,
    sleeps 5 s for 44, else ``Judgement: 0``."""

    models = ({"id": "judge-model", "max_model_len": 4096},)

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        prompt = prompt_of(body)
        if "Reference answer: 44\n" in prompt:
            time.sleep(5)
        return chat_reply("Judgement: 1" if "Reference answer: 42\n" in prompt
                          else "maybe" if "Reference answer: 43\n" in prompt else "Judgement: 0")


@pytest.fixture
def server():
    with ScriptedJudgeServer() as scripted:
        yield scripted


def _settings(base_url: str, **overrides) -> JudgeSettings:
    return JudgeSettings(**{"base_url": base_url, "prompt_file": PROMPT, "timeout_s": 2.0, "retries": 0,
                            **overrides})


ITEMS = [
    {"response": "So it is forty-two: \\boxed{\\text{forty-two}}", "answer": "42", "question": "6 x 7?"},
    {"response": "\\boxed{42}", "answer": "42"},  # already correct: not sent
    {"response": "\\boxed{0}", "answer": "3x+4y+14=0"},  # a part of the gold (structure): never sent
    {"response": "<think>never finished \\boxed{42}", "answer": "42"},  # unfinished: never sent
    {"response": "I believe \\boxed{7}", "answer": "43"},  # the judge answers "maybe": rules stand
    {"response": "\\boxed{8}", "answer": "9"},  # judged 0: rules stand
]


@pytest.fixture(scope="module")
def rule_results():
    return verify_batch(ITEMS, timeout_s=20)


def test_only_judgeable_rule_negatives_are_sent_and_verdicts_are_parsed(server, rule_results, tmp_path):
    assert [r.reason for r in rule_results] == [
        "mismatch", "exact", "structure", "unfinished_think", "mismatch", "mismatch"]
    judge = GenerativeJudge(_settings(server.base_url, cache_path=str(tmp_path / "cache.jsonl")))
    judged = judge.rejudge(ITEMS, rule_results)
    sent_golds = sorted(p.split("Reference answer: ")[1].split("\n")[0] for p in server.prompts)
    assert sent_golds == ["42", "43", "9"]
    assert (judged[0].correct, judged[0].reason) == (True, "judge")
    assert judged[1] == rule_results[1] and judged[3] == rule_results[3]
    assert judged[4] == rule_results[4] and judged[5] == rule_results[5]
    assert judge.stats["overturned"] == 1 and judge.stats["unparsed"] == 1
    # requests run concurrently: find the prompt by its reference answer, not by arrival order
    first = next(p for p in server.prompts if "Reference answer: 42\n" in p)
    assert "Question: 6 x 7?" in first and "\\boxed{\\text{forty-two}}" in first and "{response}" not in first


def test_verdicts_are_cached_under_the_judge_name(server, rule_results, tmp_path):
    cache = tmp_path / "cache.jsonl"
    GenerativeJudge(_settings(server.base_url, cache_path=str(cache))).rejudge(ITEMS, rule_results)
    asked = len(server.prompts)
    again = GenerativeJudge(_settings(server.base_url, cache_path=str(cache)))
    judged = again.rejudge(ITEMS, rule_results)
    assert len(server.prompts) == asked + 1  # only the unreadable reply is asked again
    assert judged[0].reason == "judge" and again.stats["cached"] >= 2
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert {row["judge"] for row in rows} == {again.name()} and again.name().startswith("judge-model@")
    other_prompt = tmp_path / "other.txt"
    other_prompt.write_text(Path(PROMPT).read_text() + "\nBe brief.")
    GenerativeJudge(_settings(server.base_url, cache_path=str(cache), prompt_file=str(other_prompt))).rejudge(
        ITEMS, rule_results)
    assert len(server.prompts) > asked + 1  # a new prompt is a new judge: nothing reused


def test_a_request_that_times_out_keeps_the_rule_verdict(server):
    items = [{"response": "\\boxed{1}", "answer": "44"}]
    results = [Result(False, "1", "mismatch")]
    judge = GenerativeJudge(_settings(server.base_url, timeout_s=0.5))
    start = time.monotonic()
    assert judge.rejudge(items, results) == results
    assert judge.stats["failed"] == 1 and time.monotonic() - start < 4.5


def test_a_server_that_is_down_is_a_clear_error_or_leaves_the_rules(rule_results):
    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError, match="127.0.0.1"):
        GenerativeJudge(_settings(down, model="judge-model")).rejudge(ITEMS, rule_results)
    judge = GenerativeJudge(_settings(down, model="judge-model", on_error="rules"))
    assert judge.rejudge(ITEMS, rule_results) == list(rule_results)
    assert judge.stats["unreachable"] >= 1


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [("Judgement: 1", True), ("judgment: 0", False), (" 1", True), ("**Judgement:** 0.", False),
     ("Judgement: 0\nJudgement: 1", True), ("yes", None), ("", None)],
)
def test_parse_judgement(reply, verdict):
    assert parse_judgement(reply) is verdict


def test_bad_settings_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="endpoint"):
        GenerativeJudge(JudgeSettings(base_url="http://x", prompt_file=PROMPT, endpoint="grpc"))
    with pytest.raises(UserError, match="missing"):
        (tmp_path / "p.txt").write_text("no fields")
        GenerativeJudge(JudgeSettings(base_url="http://x", prompt_file=str(tmp_path / "p.txt")))


@pytest.mark.slow
def test_a_real_vllm_server_judges_and_a_cached_rerun_needs_no_server(tiny_root, tmp_path):
    pytest.importorskip("vllm")
    from rollout.local_server import LocalVLLMServer

    cache = tmp_path / "judge.jsonl"
    items = [{"response": "\\boxed{\\text{forty-two}}", "answer": "42"}, {"response": "\\boxed{8}", "answer": "9"}]
    results = [Result(False, "\\text{forty-two}", "mismatch"), Result(False, "8", "mismatch")]
    server = LocalVLLMServer(tiny_root["reasoner"], tmp_path / "server.log", max_model_len=2048,
                             env={"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"})
    with server:
        judge = GenerativeJudge(JudgeSettings(base_url=server.base_url, prompt_file=PROMPT, endpoint="completions",
                                              max_tokens=8, cache_path=str(cache)))
        first = judge.rejudge(items, results)
        name = judge.name()
    stats = judge.stats
    assert stats["judged"] + stats["unparsed"] + stats["failed"] == 2 and stats["failed"] == 0
    assert all(r.reason in ("judge", "mismatch") for r in first)
    rows = [json.loads(line) for line in cache.read_text().splitlines()] if cache.exists() else []
    assert len(rows) == stats["judged"] and all(row["judge"] == name for row in rows)
    # the server is gone: judged items come from the cache, the others keep the rules' verdict
    rerun = GenerativeJudge(JudgeSettings(base_url=server.base_url, model=name.split("@")[0], prompt_file=PROMPT,
                                          endpoint="completions", cache_path=str(cache), on_error="rules",
                                          timeout_s=5, retries=0))
    assert rerun.rejudge(items, results) == first
    assert rerun.stats["cached"] == stats["judged"] and rerun.stats["unreachable"] == 2 - stats["judged"]


def test_a_response_holding_a_placeholder_is_kept_as_written():
    """Bug caught: placeholders filled one after the other, so a response containing ``{extracted}`` or
    ``{answer}`` had the gold or the extraction pasted into it."""
    judge = GenerativeJudge(JudgeSettings(base_url="http://127.0.0.1:9", prompt_file=PROMPT))
    text = judge.prompt({"response": "I write {extracted} and {answer} here: \\boxed{5}", "answer": "6"},
                        Result(False, "5", "mismatch"))
    assert "I write {extracted} and {answer} here" in text and "Reference answer: 6\n" in text


def test_a_judge_built_for_another_section_names_that_sections_keys(tmp_path):
    """Bug caught: GRPO's ``grpo.judge`` errors named ``rollout.verifier.judge.*`` (a key the user never set)."""
    from rollout.config import JudgeConfig
    from rollout.verifier.judge import from_config

    config = JudgeConfig(enabled=True, model="m", endpoint_file=str(tmp_path / "none"), wait_for_server_s=0)
    with pytest.raises(UserError, match="^grpo.judge.endpoint_file: "):
        from_config(config, None, section="grpo.judge")
    with pytest.raises(UserError, match="^rollout.verifier.judge.prompt"):
        from_config(JudgeConfig(enabled=True, model="m", base_url="http://127.0.0.1:9", prompt="nope.txt"), None)
