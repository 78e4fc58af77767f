"""The score stage with the generative judge (``rollout.verifier.judge``) on a hand-built store.

The fast tests use ``StandInJudgeServer``: a stand-in for the served judge model (``tests.stand_in_server``:
a real stdlib HTTP server on 127.0.0.1 speaking the OpenAI protocol, replies scripted by the prompt), because what they
test is the plumbing — which answers go to the judge, caching in the store, provenance, a server that
is down. The slow test serves the tiny reasoner with a real ``vllm serve`` and runs the stage against it.
The rule verifier is the real one throughout.
"""

from __future__ import annotations

import json
import shutil

import pytest

from rollout.local_server import free_port
from tests.stand_in_server import StandInServer, chat_reply, prompt_of

TEXTS = {  # n -> trajectory text; the gold answer is 42
    0: "Six sevens: \\boxed{42}.",  # rules: correct, never sent
    1: "It is forty-two, so \\boxed{\\text{forty-two}}.",  # rules: mismatch; the stand-in judge says 1
    2: "I get \\boxed{41}.",  # rules: mismatch; the stand-in judge says 0
    3: "<think>six times seven is \\boxed{42}",  # unfinished_think: never sent
}


class StandInJudgeServer(StandInServer):
    """Stand-in for a served judge model: ``Judgement: 1`` when the student's solution says
    "forty-two", else ``Judgement: 0``; answers 400 while ``refuse`` is set."""

    models = ({"id": "stand-in-judge"},)
    refuse = False

    def answer(self, path: str, body: dict) -> tuple[int, dict]:
        if self.refuse:
            return 400, {"error": {"message": "refused"}}
        return chat_reply(f"Judgement: {int('forty-two' in prompt_of(body).split('Student')[1])}")


@pytest.fixture
def judge_server():
    with StandInJudgeServer() as server:
        yield server


def _run(tmp_path, texts=TEXTS, **judge):
    from rollout.config import (
        CaptionerConfig,
        JudgeConfig,
        ReasonerConfig,
        RolloutConfig,
        RolloutVerifierConfig,
    )
    from rollout.engine_api import EngineConfig
    from rollout.pipeline import open_run
    from rollout.sharding import Shard
    from rollout.stages import CAPTIONS, TRAJECTORIES, as_arrow

    reasoner = tmp_path / "reasoner"
    reasoner.mkdir(exist_ok=True)
    (reasoner / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ '' }}"}))
    (tmp_path / "inputs.jsonl").write_text(json.dumps(
        {"id": "q", "image": "x.png", "question": "What is 6 x 7?", "answer": "42"}) + "\n")
    (tmp_path / "x.png").write_bytes(b"never decoded")
    judge_config = JudgeConfig(**{"enabled": True, "model": "stand-in-judge", "timeout_s": 5.0, "retries": 0,
                                  **judge}) if judge else JudgeConfig()
    config = RolloutConfig(inputs=[str(tmp_path / "inputs.jsonl")], store_dir=str(tmp_path / "store"),
                           N=len(texts), captioner=CaptionerConfig(K=1),
                           verifier=RolloutVerifierConfig(judge=judge_config),
                           reasoner=ReasonerConfig(easy=EngineConfig(model=str(reasoner))))
    run = open_run(config, None, Shard(), engine_factory=None)
    if not run.store.table(TRAJECTORIES, ("id", "k", "n")).shard_paths():
        run.checked_table(CAPTIONS, write=True).write(as_arrow(
            [{"id": "q", "k": 0, "text": "a question", "num_tokens": 2, "finish_reason": "stop"}], CAPTIONS))
        run.checked_table(TRAJECTORIES, write=True).write(as_arrow(
            [{"id": "q", "k": 0, "n": n, "text": text, "num_tokens": 10, "finish_reason": "stop", "route": "easy"}
             for n, text in texts.items()], TRAJECTORIES))
    return run


def _scores(run) -> dict[int, tuple[bool, str, float]]:
    from rollout.stages import SCORES, read_rows

    rows = read_rows(run.store, SCORES, ["n", "correct", "reason", "caption_reward"])
    return {row["n"]: (row["correct"], row["reason"], row["caption_reward"]) for row in rows}


def test_the_judge_overturns_a_rule_negative_and_a_rerun_reuses_its_cached_verdicts(tmp_path, judge_server):
    """Bugs caught: the judge not asked, or asked about rule positives / unfinished thinking; the caption
    reward computed before the judge's verdicts; verdicts not cached in the store, so a rescore asks again."""
    from rollout.stages import score_stage
    from rollout.verifier.judge import CACHE_FILE

    run = _run(tmp_path, base_url=judge_server.base_url)
    report = score_stage(run).to_json()
    scores = _scores(run)
    assert scores[1][:2] == (True, "judge") and scores[2][:2] == (False, "mismatch")
    assert scores[0][0] is True and scores[3][:2] == (False, "unfinished_think")
    assert {reward for _, _, reward in scores.values()} == {0.5}  # Eq. 5 over the judged verdicts
    assert len(judge_server.prompts) == 2 and "Question: What is 6 x 7?" in judge_server.prompts[0]
    assert (report["judge_overturned"], report["judge_asked"], report["judge_cached"]) == (1, 2, 0)
    cached = [json.loads(line) for line in (run.store.root / CACHE_FILE).read_text().splitlines()]
    assert len(cached) == 2 and {row["judge"].split("@")[0] for row in cached} == {"stand-in-judge"}

    shutil.rmtree(run.store.root / "scores")  # rescore from scratch: every verdict comes from the cache
    again = score_stage(_run(tmp_path, base_url=judge_server.base_url)).to_json()
    assert len(judge_server.prompts) == 2
    assert (again["judge_overturned"], again["judge_asked"], again["judge_cached"]) == (1, 0, 2)
    assert _scores(run) == scores


def test_a_store_scored_with_another_judge_or_none_is_refused(tmp_path, judge_server):
    """Bug caught: a scores table made under one judge (or none) extended under another as if the same."""
    from rollout.stages import score_stage
    from rollout.store import StoreError

    score_stage(_run(tmp_path, texts={0: TEXTS[0]}))  # rules only
    with pytest.raises(StoreError, match="(?s)table 'scores'.*judge: recorded null, now .*stand-in-judge"):
        score_stage(_run(tmp_path, texts={0: TEXTS[0]}, base_url=judge_server.base_url))
    shutil.rmtree(tmp_path / "store" / "scores")
    score_stage(_run(tmp_path, texts={0: TEXTS[0]}, base_url=judge_server.base_url))
    other = tmp_path / "judge2.txt"
    other.write_text("Reference answer: {answer}\nStudent: {response}\nJudgement:")
    with pytest.raises(StoreError, match="judge.prompt_sha256: recorded"):
        score_stage(_run(tmp_path, texts={0: TEXTS[0]}, base_url=judge_server.base_url, prompt=str(other)))
    with pytest.raises(StoreError, match="judge.model: recorded"):
        score_stage(_run(tmp_path, texts={0: TEXTS[0]}, base_url=judge_server.base_url, model="another"))


def test_a_judge_server_that_is_down_stops_the_stage_or_leaves_the_rule_verdicts(tmp_path):
    """Bugs caught: a down server silently scored by rules under on_error=fail (or the stage crashing
    under on_error=rules); the count of unreachable verdicts not reported."""
    from rollout.stages import score_stage
    from sophia_common.cli import UserError

    down = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError, match=down.replace(".", r"\.")):
        score_stage(_run(tmp_path, base_url=down))
    assert _scores(_run(tmp_path, base_url=down)) == {}  # nothing written
    report = score_stage(_run(tmp_path, base_url=down, on_error="rules")).to_json()
    scores = _scores(_run(tmp_path, base_url=down, on_error="rules"))
    assert [scores[n][:2] for n in (1, 2)] == [(False, "mismatch"), (False, "mismatch")]
    assert report["judge_unreachable"] == 2 and report["judge_overturned"] == 0


def test_a_failed_judge_request_leaves_its_caption_for_the_next_run(tmp_path, judge_server):
    """Bug caught: a judge request refused by the server (HTTP 400) written as the rule verdict for good
    under on_error=fail; the next run must ask again and then score the caption."""
    from rollout.stages import score_stage

    judge_server.refuse = True
    report = score_stage(_run(tmp_path, base_url=judge_server.base_url)).to_json()
    assert report["judge_failed"] == 2 and report["written"] == 0
    judge_server.refuse = False
    report = score_stage(_run(tmp_path, base_url=judge_server.base_url)).to_json()
    assert report["written"] == 4 and _scores(_run(tmp_path, base_url=judge_server.base_url))[1][1] == "judge"


def test_the_recipe_judge_needs_a_model_and_a_server():
    from rollout.config import load_config
    from sophia_common.config import ConfigError

    with pytest.raises(ConfigError, match="rollout.verifier.judge: enabled: set model"):
        load_config(None, ["inputs=[a.jsonl]", "store_dir=s", "verifier.judge.enabled=true",
                           "verifier.judge.base_url=http://h:1"])
    with pytest.raises(ConfigError, match="set base_url .* or endpoint_file"):
        load_config(None, ["inputs=[a.jsonl]", "store_dir=s", "verifier.judge.enabled=true",
                           "verifier.judge.model=m"])


@pytest.mark.slow
def test_the_score_stage_with_a_real_vllm_judge(tiny_root, tmp_path):
    """The tiny reasoner served by ``vllm serve`` judges the rule negatives (its verdicts are whatever a tiny
    model says: the test checks the plumbing — completions endpoint, parsing, store cache, counts)."""
    pytest.importorskip("vllm")
    from rollout.local_server import LocalVLLMServer
    from rollout.stages import score_stage
    from rollout.verifier.judge import CACHE_FILE

    server = LocalVLLMServer(tiny_root["reasoner"], tmp_path / "server.log", max_model_len=2048,
                             env={"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"})
    with server:
        run = _run(tmp_path, base_url=server.base_url, model=str(tiny_root["reasoner"]), endpoint="completions",
                   max_tokens=8, timeout_s=120.0)
        report = score_stage(run).to_json()
    assert report["judge_asked"] + report["judge_failed"] == 2 and report["judge_failed"] == 0
    scores = _scores(run)
    assert len(scores) == 4 and all(scores[n][1] in ("judge", "mismatch") for n in (1, 2))
    assert report["judge_overturned"] == sum(scores[n][1] == "judge" for n in (1, 2))
    cache = run.store.root / CACHE_FILE  # only readable verdicts are cached: an unparsed reply is asked again
    cached = cache.read_text().splitlines() if cache.exists() else []
    assert len(cached) == report["judge_asked"] - report["judge_unparsed"]
    shutil.rmtree(run.store.root / "scores")  # the server is gone: cached verdicts, rules for the rest
    rerun = score_stage(_run(tmp_path, base_url=server.base_url, model=str(tiny_root["reasoner"]),
                             endpoint="completions", on_error="rules", retries=0)).to_json()
    assert rerun["judge_cached"] == len(cached) and rerun["judge_unreachable"] == 2 - len(cached)
    assert _scores(run) == scores
