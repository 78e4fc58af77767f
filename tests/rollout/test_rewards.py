"""Eq. 5 / Eq. 6 and the ablations on hand-made score tables; the select stage and its export on a hand-built store."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from rollout.rewards import (
    ScoredTrajectory,
    SelectionSettings,
    caption_reward,
    caption_rewards,
    dataset_rewards,
    select,
    select_for_question,
)


def traj(k: int, n: int, correct: bool, reward: float, tokens: int, item: str = "q") -> ScoredTrajectory:
    return ScoredTrajectory(id=item, k=k, n=n, correct=correct, caption_reward=reward, num_tokens=tokens)


def keys(trajectories) -> list[tuple[int, int]]:
    return [(t.k, t.n) for t in trajectories]


# ---------------------------------------------------------------- Eq. 5


def test_caption_reward_is_the_mean_outcome():
    assert caption_reward([True, True, False, False]) == 0.5
    assert caption_reward([1, 1, 1, 0, 1, 1, 1, 1]) == 7 / 8
    assert caption_reward([False] * 8) == 0.0
    with pytest.raises(ValueError):
        caption_reward([])
    outcomes = [("a", 0, True), ("a", 0, False), ("a", 1, True), ("b", 0, False)]
    assert caption_rewards(outcomes) == {("a", 0): 0.5, ("a", 1): 1.0, ("b", 0): 0.0}


# ---------------------------------------------------------------- Eq. 6


def question() -> list[ScoredTrajectory]:
    """Caption 0 (reward 0.75), caption 1 (reward 0.5, has the shortest correct one), caption 2 (1.0)."""
    return [
        traj(0, 0, True, 0.75, 300), traj(0, 1, True, 0.75, 120), traj(0, 2, True, 0.75, 500),
        traj(0, 3, False, 0.75, 50),
        traj(1, 0, True, 0.5, 80), traj(1, 1, True, 0.5, 90), traj(1, 2, False, 0.5, 10), traj(1, 3, False, 0.5, 20),
        traj(2, 0, True, 1.0, 200), traj(2, 1, True, 1.0, 150), traj(2, 2, True, 1.0, 400), traj(2, 3, True, 1.0, 600),
    ]


def test_keep_1_is_the_shortest_correct_of_a_good_caption():
    chosen = select_for_question(question(), SelectionSettings(alpha=0.75, keep_k=1))
    assert keys(chosen) == [(0, 1)]  # 120 tokens; (1, 0) is shorter but its caption has 0.5 < alpha; (0, 3) wrong


def test_alpha_threshold_is_inclusive():
    assert keys(select_for_question(question(), SelectionSettings(alpha=0.75))) == [(0, 1)]
    assert keys(select_for_question(question(), SelectionSettings(alpha=0.76))) == [(2, 1)]
    assert keys(select_for_question(question(), SelectionSettings(alpha=0.5))) == [(1, 0)]
    seven_of_ten = [traj(0, n, n < 7, caption_reward([n < 7 for n in range(10)]), 100 + n) for n in range(10)]
    assert keys(select_for_question(seven_of_ten, SelectionSettings(alpha=0.7))) == [(0, 0)]


def test_keep_k_keeps_the_k_shortest_eligible():
    settings = SelectionSettings(alpha=0.75, keep_k=3)
    assert keys(select_for_question(question(), settings)) == [(0, 1), (2, 1), (2, 0)]
    everything = SelectionSettings(alpha=0.75, keep_k=50)
    assert len(select_for_question(question(), everything)) == 7  # 3 correct of caption 0, 4 of caption 2


def test_ties_break_by_caption_then_trajectory_index():
    tied = [traj(2, 0, True, 1.0, 100), traj(1, 3, True, 1.0, 100), traj(1, 1, True, 1.0, 100)]
    assert keys(select_for_question(tied, SelectionSettings(keep_k=2))) == [(1, 1), (1, 3)]
    assert keys(select_for_question(list(reversed(tied)), SelectionSettings(keep_k=2))) == [(1, 1), (1, 3)]


def test_nothing_is_selected_without_an_eligible_trajectory():
    wrong = [traj(0, n, False, 0.0, 10 * n + 5) for n in range(4)]
    assert select_for_question(wrong, SelectionSettings()) == []
    weak_captions = [traj(0, 0, True, 0.25, 50), traj(1, 0, True, 0.5, 60)]
    assert select_for_question(weak_captions, SelectionSettings(alpha=0.75)) == []
    assert select_for_question([], SelectionSettings()) == []


def test_dataset_rewards_weight_one_for_selected_only():
    weights = dataset_rewards(question(), SelectionSettings(alpha=0.75, keep_k=2))
    assert len(weights) == 12
    assert {key for key, weight in weights.items() if weight == 1.0} == {("q", 0, 1), ("q", 2, 1)}
    assert set(weights.values()) == {0.0, 1.0}


def test_select_over_many_questions_is_per_question():
    mixed = question() + [traj(0, 0, True, 1.0, 7, item="other"), traj(0, 1, False, 1.0, 3, item="other")]
    chosen = select(mixed, SelectionSettings(keep_k=1))
    assert [(t.id, t.k, t.n) for t in chosen] == [("q", 0, 1), ("other", 0, 0)]
    with pytest.raises(ValueError, match="one question"):
        select_for_question(mixed, SelectionSettings())


# ---------------------------------------------------------------- ablations


def test_no_caption_reward_ignores_alpha():
    chosen = select_for_question(question(), SelectionSettings(alpha=0.75, ablation="no_caption_reward"))
    assert keys(chosen) == [(1, 0)]  # 80 tokens, caption reward 0.5 now allowed; wrong ones still excluded
    wrong = [traj(0, 0, False, 1.0, 1)]
    assert select_for_question(wrong, SelectionSettings(ablation="no_caption_reward")) == []


def test_no_shortest_draws_an_eligible_trajectory_deterministically():
    eligible = {(0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2), (2, 3)}
    draws = set()
    for seed in range(40):
        settings = SelectionSettings(alpha=0.75, ablation="no_shortest", seed=seed)
        chosen = keys(select_for_question(question(), settings))
        assert len(chosen) == 1 and chosen[0] in eligible
        assert keys(select_for_question(list(reversed(question())), settings)) == chosen  # order-free
        draws.add(chosen[0])
    assert len(draws) > 2  # genuinely random across seeds, not always the shortest
    assert select_for_question([traj(0, 0, False, 1.0, 5)], SelectionSettings(ablation="no_shortest")) == []


def test_random_ignores_rewards_and_is_seeded():
    all_keys = {(t.k, t.n) for t in question()}
    draws = []
    for seed in range(40):
        settings = SelectionSettings(ablation="random", keep_k=2, seed=seed)
        chosen = keys(select_for_question(question(), settings))
        assert len(chosen) == 2 and set(chosen) <= all_keys
        assert keys(select_for_question(question(), settings)) == chosen
        draws += chosen
    assert {(0, 3), (1, 2), (1, 3)} & set(draws)  # wrong answers can be drawn: rewards are ignored
    nothing_right = [traj(0, n, False, 0.0, 5) for n in range(3)]
    assert len(select_for_question(nothing_right, SelectionSettings(ablation="random"))) == 1


def test_random_never_draws_truncated_or_unfinished_trajectories():
    """Old behaviour: the random pool held every trajectory, cut-off ones (finish_reason=length) included."""
    from dataclasses import replace

    pool = [replace(t, truncated=t.n == 0, unfinished=t.n == 1) for t in question()]
    finished = {(t.k, t.n) for t in pool if t.n >= 2}
    for seed in range(40):
        chosen = keys(select_for_question(pool, SelectionSettings(ablation="random", keep_k=3, seed=seed)))
        assert len(chosen) == 3 and set(chosen) <= finished
    cut_off = [replace(t, truncated=True) for t in question()]
    assert select_for_question(cut_off, SelectionSettings(ablation="random")) == []


def test_random_draw_of_a_question_does_not_depend_on_other_questions():
    settings = SelectionSettings(ablation="random", seed=3)
    alone = select(question(), settings)
    other = [traj(0, n, True, 1.0, n, item="zzz") for n in range(5)]
    together = select(other + question(), settings)
    assert [t for t in together if t.id == "q"] == alone


def test_settings_are_validated():
    for bad in (dict(alpha=1.5), dict(keep_k=0), dict(ablation="shortest")):
        with pytest.raises(ValueError):
            SelectionSettings(**bad)


# ---------------------------------------------------------------- the select stage on a hand-built store


def _hand_built_run(tmp_path, **overrides):
    from rollout.config import CaptionerConfig, RolloutConfig
    from rollout.pipeline import open_run
    from rollout.sharding import Shard
    from rollout.stages import CAPTIONS, SCORES, TRAJECTORIES, as_arrow

    Image.new("RGB", (32, 24), (0, 0, 255)).save(tmp_path / "blue.png")
    rows = [{"id": "q", "image": "blue.png", "question": "<image>\nHow many?", "answer": "3", "source": "hand"},
            {"id": "none_right", "image": "blue.png", "question": "Which?", "answer": "B", "source": "hand"}]
    (tmp_path / "inputs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    overrides.setdefault("N", 4)
    config = RolloutConfig(inputs=[str(tmp_path / "inputs.jsonl")], store_dir=str(tmp_path / "store"),
                           captioner=CaptionerConfig(K=3), **overrides)
    run = open_run(config, None, Shard(), engine_factory=None)
    for table in (CAPTIONS, TRAJECTORIES, SCORES):  # as the stages would record them
        run.checked_table(table, write=True)
    scored = question() + [traj(k, n, False, 0.0, 10, item="none_right") for k in range(3) for n in range(4)]
    text = {True: "so the count is \\boxed{3}</think>There are 3.", False: "I think it is \\boxed{4}."}
    run.store.table(CAPTIONS).write(as_arrow([{"id": t.id, "k": t.k, "text": "a caption", "num_tokens": 3,
                                               "finish_reason": "stop"} for t in scored if t.n == 0], CAPTIONS))
    run.store.table(TRAJECTORIES).write(as_arrow([
        {"id": t.id, "k": t.k, "n": t.n, "text": text[t.correct], "num_tokens": t.num_tokens,
         "finish_reason": "stop", "route": "easy"} for t in scored], TRAJECTORIES))
    run.store.table(SCORES).write(as_arrow([
        {"id": t.id, "k": t.k, "n": t.n, "correct": t.correct, "extracted": None, "reason": "hand",
         "truncated": False, "caption_reward": t.caption_reward, "num_tokens": t.num_tokens} for t in scored],
        SCORES))
    return run


def test_select_stage_writes_sample_records_and_exports_them(tmp_path):
    from rollout.inputs import read_inputs
    from rollout.pipeline import export_selected
    from rollout.stages import DECISIONS, SELECTED, read_rows, select_stage

    run = _hand_built_run(tmp_path, keep_k=2)
    report = select_stage(run)
    assert (report.written, report.extra["questions_decided"]) == (2, 2)
    selected = sorted(read_rows(run.store, SELECTED, ["id", "k", "n", "response", "weight", "image_path"]),
                      key=lambda row: (row["k"], row["n"]))
    assert [(row["id"], row["k"], row["n"]) for row in selected] == [("q", 0, 1), ("q", 2, 1)]
    assert all(row["weight"] == 1.0 and row["response"].startswith("<think>\n") for row in selected)
    assert selected[0]["image_path"].endswith("blue.png")
    decisions = {row["id"]: row for row in read_rows(run.store, DECISIONS, ["id", "selected", "eligible"])}
    assert decisions["none_right"] == {"id": "none_right", "selected": 0, "eligible": 0}
    assert select_stage(run).written == 0  # decided questions are not decided again
    for name in ("selected.parquet", "selected.jsonl"):
        assert export_selected(run.store, tmp_path / name) == 2
        samples = read_inputs(tmp_path / name, require=("image",), extra_columns=("response", "weight"))
        assert not samples.rejects
        assert [row.id for row in samples.rows] == ["q/k0n1", "q/k2n1"]
        assert samples.rows[0].extra["weight"] == 1.0 and samples.rows[0].image_bytes()[:4] == b"\x89PNG"


def test_select_stage_refuses_other_settings_on_a_decided_store(tmp_path):
    from rollout.stages import select_stage
    from sophia_common.cli import UserError

    run = _hand_built_run(tmp_path)
    select_stage(run)
    run.config.alpha = 0.5
    with pytest.raises(UserError, match="(?s)table 'decisions'.*alpha: recorded 0.75, now 0.5.*fresh "
                                        "rollout.store_dir"):
        select_stage(run)


def test_select_stage_waits_for_incomplete_questions(tmp_path):
    from rollout.stages import DECISIONS, TRAJECTORIES, read_rows, select_stage
    from rollout.store import reject_record

    run = _hand_built_run(tmp_path, N=5)  # the stored captions lack a fifth trajectory each
    report = select_stage(run)
    assert (report.written, report.extra["questions_incomplete"]) == (0, 2)
    assert not read_rows(run.store, DECISIONS, ["id"])
    hashes = run.input_hashes()
    run.store.write_rejects([reject_record(item, "reason", "engine_error", k=k, n=4, input_hash=hashes[item])
                             for item in ("q", "none_right") for k in range(3)])
    assert select_stage(run).extra["questions_incomplete"] == 2  # an engine error is retried, not final
    run.store.write_rejects([reject_record(item, "reason", "prompt_too_long", k=k, n=4, input_hash=hashes[item])
                             for item in ("q", "none_right") for k in range(3)])
    assert select_stage(run).extra["questions_decided"] == 2
    assert read_rows(run.store, TRAJECTORIES, ["id"])
