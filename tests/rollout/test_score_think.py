"""The score stage on a hand-built store: unfinished thinking scores 0 with its reason, and stages refuse
to run out of order.

The reasoner here is a directory with only a ``tokenizer_config.json`` whose chat template opens the
think block in the generation prompt, as QwQ's and DeepSeek-R1's do: its completions start inside
``<think>`` and only close it. No model runs; the verifier is the real one.
"""

from __future__ import annotations

import json

import pytest

QWQ_TEMPLATE = ("{%- for message in messages %}{{- '<|im_start|>' + message.role + '\\n' + message.content + "
                "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n"
                "<think>\\n' }}{%- endif %}")
PLAIN_TEMPLATE = "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
TEXTS = {  # n -> (text, finish_reason)
    0: ("I count three stars, so the answer is \\boxed{3}.</think>There are \\boxed{3}.", "stop"),
    1: ("I count three stars, so the answer is \\boxed{3}. Wait, let me count again", "stop"),  # never closes
    2: ("<think>three stars, \\boxed{3} and then I stop", "stop"),  # opened itself, never closed
    3: ("I count \\boxed{3} and I was cut", "length"),
}


def _run(tmp_path, template: str, **verifier):
    from rollout.config import CaptionerConfig, ReasonerConfig, RolloutConfig, VerifierConfig
    from rollout.engine_api import EngineConfig
    from rollout.pipeline import open_run
    from rollout.sharding import Shard

    reasoner = tmp_path / "reasoner"
    reasoner.mkdir(exist_ok=True)
    (reasoner / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    (tmp_path / "blue.png").write_bytes(b"not needed: nothing decodes it")
    (tmp_path / "inputs.jsonl").write_text(json.dumps(
        {"id": "q", "image": "blue.png", "question": "How many stars?", "answer": "3"}) + "\n")
    config = RolloutConfig(inputs=[str(tmp_path / "inputs.jsonl")], store_dir=str(tmp_path / "store"), N=4,
                           captioner=CaptionerConfig(K=1), verifier=VerifierConfig(**verifier),
                           reasoner=ReasonerConfig(easy=EngineConfig(model=str(reasoner))))
    return open_run(config, None, Shard(), engine_factory=None)


def _store_trajectories(run) -> None:
    from rollout.stages import CAPTIONS, TRAJECTORIES, as_arrow

    run.checked_table(CAPTIONS, write=True).write(as_arrow(
        [{"id": "q", "k": 0, "text": "three stars", "num_tokens": 2, "finish_reason": "stop"}], CAPTIONS))
    run.checked_table(TRAJECTORIES, write=True).write(as_arrow(
        [{"id": "q", "k": 0, "n": n, "text": text, "num_tokens": 10 + n, "finish_reason": finish, "route": "easy"}
         for n, (text, finish) in TEXTS.items()], TRAJECTORIES))


def _scores(run) -> dict[int, tuple[bool, str, float]]:
    from rollout.stages import SCORES, read_rows

    rows = read_rows(run.store, SCORES, ["n", "correct", "reason", "caption_reward"])
    return {row["n"]: (row["correct"], row["reason"], row["caption_reward"]) for row in rows}


def test_unclosed_think_scores_zero_with_its_reason(tmp_path):
    """Old behaviour: a monologue that never closed </think> was verified whole, and here scored correct."""
    from rollout.stages import score_stage

    run = _run(tmp_path, QWQ_TEMPLATE)
    _store_trajectories(run)
    assert score_stage(run).written == 4
    scores = _scores(run)
    assert scores[0][:2] == (True, scores[0][1]) and scores[0][1] != "unfinished_think"
    assert scores[1][:2] == (False, "unfinished_think")  # the template opened the block
    assert scores[2][:2] == (False, "unfinished_think")  # the response opened it itself
    assert scores[3][:2] == (False, "truncated")
    assert {reward for _, _, reward in scores.values()} == {0.25}  # Eq. 5 counts them as 0


def test_unfinished_think_can_be_scored_as_is(tmp_path):
    from rollout.stages import score_stage

    run = _run(tmp_path, QWQ_TEMPLATE, unfinished_think="score")
    _store_trajectories(run)
    score_stage(run)
    scores = _scores(run)
    assert [scores[n][0] for n in range(4)] == [True, True, True, False]


def test_a_plain_template_does_not_make_a_thinkless_answer_unfinished(tmp_path):
    from rollout.stages import score_stage

    run = _run(tmp_path, PLAIN_TEMPLATE)
    _store_trajectories(run)
    score_stage(run)
    scores = _scores(run)
    assert scores[1][:2] == (True, scores[1][1])  # a plain model's answer is verified as it is
    assert scores[2][1] == "unfinished_think"  # an opened and unclosed block is unfinished anyway


@pytest.mark.parametrize(("stage", "first"), [("reason", "caption"), ("score", "reason"), ("select", "score")])
def test_a_stage_before_its_input_is_an_error_that_says_what_to_run(tmp_path, stage, first):
    """Old behaviour: ``reason`` on a store without captions did nothing and exited 0."""
    from rollout import stages
    from sophia_common.cli import UserError

    run = _run(tmp_path, PLAIN_TEMPLATE)
    with pytest.raises(UserError, match=f"the {first} stage has not run on this store yet. "
                                        f"Run `sophia-rollout {first} --config RECIPE`"):
        getattr(stages, f"{stage}_stage")(run)


def test_a_changed_k_or_n_is_refused_on_a_resumed_store(tmp_path):
    """Old behaviour: a resumed store took the new N; new trajectories were scored beside captions whose
    reward had been computed over the old N, and selection waited for trajectories that never came."""
    from rollout.stages import reason_stage, score_stage, select_stage
    from rollout.store import StoreError
    from sophia_common.cli import UserError

    run = _run(tmp_path, PLAIN_TEMPLATE)
    _store_trajectories(run)
    score_stage(run)
    run.config.N = 8
    with pytest.raises(StoreError, match="(?s)table 'trajectories'.*N: recorded 4, now 8.*namespace"):
        reason_stage(run)
    with pytest.raises(UserError, match="table 'trajectories' .* was made with N: recorded 4, now 8; set N back"):
        select_stage(run)
    run.config.N, run.config.captioner.K = 4, 2
    from rollout.stages import caption_stage

    with pytest.raises(StoreError, match="(?s)table 'captions'.*K: recorded 1, now 2"):
        caption_stage(run)
    with pytest.raises(UserError, match="was made with K: recorded 1, now 2"):
        select_stage(run)
