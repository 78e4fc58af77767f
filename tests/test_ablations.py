"""``make ablations``: each arm selects what its setting says from one shared store, the report's
statistics and verdicts are right, and (slow) the smoke run goes end to end and reuses its arms.

The selection test runs the real ``sophia-rollout select`` of each arm on a hand-built store whose
every trajectory is known: a right caption (reward 3/4) with two clean correct trajectories (the
shorter one and one a token longer), a recovered detour and an unrecovered one; a vague caption
(reward 1/4) with one lucky short guess. So each arm has exactly one right answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from sophia_tools.ablations import ARMS, SMOKE_ABLATIONS, arm_named
from sophia_tools.ablations.__main__ import select_arm
from sophia_tools.ablations.report import (
    above_chance,
    aggregate,
    answer_forms,
    blind_level,
    chance_level,
    checks,
    compare,
    majority_level,
    mean_std,
    orderings,
)
from sophia_tools.demo import Demo
from sophia_tools.demo.task import describe, draw, random_scene, trajectory
from tests.multirank import REPO, subprocess_env

QUESTIONS = 6
# (k, n) -> (text, correct, tokens); caption 0 states the count right, caption 1 leaves it out
TRAJECTORIES = {
    (0, 0): (trajectory("count", "red", 2), True, 20),
    (0, 1): (trajectory("count", "red", 2, detour="3", recovered=True), True, 34),
    (0, 2): (trajectory("count", "red", 2, detour="3", recovered=False), False, 34),
    (0, 3): (trajectory("count", "red", 2), True, 21),
    (1, 0): (trajectory("count", "red", None, guess="2"), True, 12),
    (1, 1): (trajectory("count", "red", None, guess="1"), False, 12),
    (1, 2): (trajectory("count", "red", None, guess="3"), False, 12),
    (1, 3): (trajectory("count", "red", None, guess="1"), False, 12),
}


def build_store(demo: Demo) -> dict[int, float]:
    """A demo-shaped workdir (task inputs + shared store) whose trajectories are all known; the tables
    are written through the rollout's own run object, so they carry the provenance records its stages
    write (the same recipe and overrides as the arms' ``select``)."""
    import random

    from rollout.config import load_config
    from rollout.pipeline import open_run
    from rollout.sharding import Shard
    from rollout.stages import as_arrow
    from sophia_tools.ablations.__main__ import RECIPE, rollout_overrides

    task = demo.path("task")
    (task / "images").mkdir(parents=True)
    rows = []
    for index in range(QUESTIONS):
        draw(random_scene(random.Random(index))).save(task / "images" / f"{index}.png")
        rows.append({"id": f"q{index}", "image": f"images/{index}.png", "question": "How many circles?",
                     "answer": "2", "source": "test", "difficulty": "hard", "category": "count"})
    (task / "rollout_inputs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    captions = [{"id": row["id"], "k": k, "text": text, "num_tokens": 12, "finish_reason": "stop"}
                for row in rows for k, text in ((0, describe("red", 2)), (1, describe("red", None)))]
    reward = {k: sum(c for (kk, _), (_, c, _) in TRAJECTORIES.items() if kk == k) / 4 for k in (0, 1)}
    trajectories, scores = [], []
    for row in rows:
        for (k, n), (text, correct, tokens) in TRAJECTORIES.items():
            trajectories.append({"id": row["id"], "k": k, "n": n, "text": text, "num_tokens": tokens,
                                 "finish_reason": "stop", "route": "easy"})
            scores.append({"id": row["id"], "k": k, "n": n, "correct": correct, "extracted": None, "reason": "test",
                           "truncated": False, "caption_reward": reward[k], "num_tokens": tokens})
    overrides = [*rollout_overrides(demo), "rollout.captioner.K=2", "rollout.N=4"]
    run = open_run(load_config(RECIPE, overrides), RECIPE, Shard.parse("0/1"))
    for name, table in (("captions", captions), ("trajectories", trajectories), ("scores", scores)):
        run.checked_table(name, write=True).write(as_arrow(table, name))
    return reward


@pytest.mark.slow  # ten short subprocesses (copy + select per arm): ~15 s alone, more on a busy machine
def test_each_arm_selects_what_its_setting_says(tmp_path):
    demo = Demo(tmp_path, replace(SMOKE_ABLATIONS.shared, K=2, N=4), echo=lambda _: None, label="test")
    assert build_store(demo) == {0: 0.75, 1: 0.25}
    demo.current = "select"
    picked = {}
    for arm in ARMS:
        work = tmp_path / "arms" / arm.name
        result = select_arm(demo, arm, seed=0, work=work)
        rows = [json.loads(line) for line in (work / "selected.jsonl").read_text().splitlines()]
        assert result["selected"] == len(rows) == QUESTIONS * arm.keep_k
        picked[arm.name] = [{(row["k"], row["n"]) for row in rows if row.get("question_id", row["id"]) == f"q{i}"}
                            for i in range(QUESTIONS)]
    assert all(choice == {(0, 0)} for choice in picked["sophia"])  # shortest of the good caption
    assert all(choice == {(0, 0), (0, 3)} for choice in picked["keep2"])
    assert all(choice == {(1, 0)} for choice in picked["no_caption_reward"])  # here the guess is the shortest
    eligible = {(0, 0), (0, 1), (0, 3)}
    assert all(choice <= eligible for choice in picked["no_shortest"])
    assert any(choice != {(0, 0)} for choice in picked["no_shortest"])  # random, not the shortest
    assert any(choice - eligible for choice in picked["random"])  # rewards ignored
    assert not (tmp_path / "store" / "selected").exists()  # the shared store is never selected into
    composition = select_arm(demo, arm_named("no_caption_reward"), seed=0, work=tmp_path / "again")["composition"]
    assert composition["guess"] == 1.0 and composition["wrong"] == 0.0


def evaluation(colour: tuple[int, int], count: tuple[int, int]) -> dict:
    return {"correct": colour[0] + count[0], "questions": colour[1] + count[1],
            "by_type": {"colour": {"correct": colour[0], "questions": colour[1]},
                        "count": {"correct": count[0], "questions": count[1]}}}


def test_statistics_and_verdicts():
    stats = mean_std([0.5, 0.6, 0.7])
    assert stats["mean"] == 0.6 and stats["std"] == pytest.approx(0.1)  # sample std (n - 1), not population
    assert mean_std([0.4])["std"] == 0.0
    pooled = aggregate([evaluation((8, 10), (2, 10)), evaluation((6, 10), (4, 10))])
    assert pooled["all"]["values"] == [0.5, 0.5] and pooled["colour"]["mean"] == 0.7 and pooled["count"]["mean"] == 0.3
    better, worse = mean_std([0.6, 0.62, 0.64]), mean_std([0.4, 0.42, 0.44])
    assert compare(worse, better)["holds"] and compare(worse, better)["z"] > 2
    assert not compare(better, worse)["holds"]
    arms = {name: {"pass@1": {"all": mean_std(values)}} for name, values in
            {"random": [0.1, 0.2], "no_caption_reward": [0.5, 0.5], "no_shortest": [0.4, 0.4],
             "sophia": [0.6, 0.7], "keep2": [0.6, 0.6]}.items()}
    verdicts = {(entry["worse"], entry["better"]): entry["holds"] for entry in orderings(arms)}
    assert verdicts == {("random", "no_caption_reward"): True, ("no_caption_reward", "no_shortest"): False,
                        ("no_shortest", "sophia"): True, ("keep2", "sophia"): True}


def test_chance_level_weights_each_type_by_its_questions_and_flags_arms_at_chance():
    # Bugs caught: chance as the plain mean of the types (0.292 whatever the mix), a wrong number of
    # possible answers, an arm at chance reported as clearly above it.
    assert chance_level(evaluation((0, 100), (0, 100))) == {"all": 0.2917, "colour": 0.25, "count": 0.3333}
    assert chance_level(evaluation((0, 100), (0, 300)))["all"] == pytest.approx((25 + 100) / 400, abs=1e-4)
    arms = {"random": {"label": "Random", "pass@1": {"all": mean_std([0.28, 0.31, 0.30])}},
            "sophia": {"label": "SOPHIA", "pass@1": {"all": mean_std([0.60, 0.62, 0.64])}}}
    verdicts = {entry["arm"]: entry for entry in above_chance(arms, {"all": 0.2917})}
    assert verdicts["sophia"]["holds"] and verdicts["sophia"]["z"] > 2
    assert verdicts["random"]["z"] < 2


def test_the_blind_level_is_the_majority_answer_where_the_gold_answers_are_skewed():
    # Bugs caught: the majority taken over all answers instead of per type, gold answers kept as
    # lists or in another case (no two would match), the blind level not raised to the majority
    # where it beats chance, an arm at the majority rate on counts reported as reading them.
    records = ([{"category": "count", "answer": ["3"]}] * 4 + [{"category": "count", "answer": ["1"]}] * 2
               + [{"category": "count", "answer": "2"}] * 2 + [{"category": "colour", "answer": [c]}
                                                              for c in ("Red", "red", "blue", "green")])
    majority = majority_level(records)
    assert majority == {"all": pytest.approx((4 + 2) / 12, abs=1e-4), "count": 0.5, "colour": 0.5}
    blind = blind_level(evaluation((0, 4), (0, 8)), {"colour": 0.25, "count": 1 / 3}, majority)
    assert blind == {"all": 0.5, "colour": 0.5, "count": 0.5}
    assert blind_level(evaluation((0, 4), (0, 8)), {"colour": 0.25, "count": 1 / 3}, {"count": 0.25})["count"] == pytest.approx(1 / 3, abs=1e-4)
    arms = {"sophia": {"label": "SOPHIA", "pass@1": {"all": mean_std([0.70, 0.71, 0.69]),
                                                     "colour": mean_std([1.0, 1.0, 1.0]),
                                                     "count": mean_std([0.50, 0.49, 0.51])}}}
    verdicts = {entry["kind"]: entry for entry in above_chance(arms, blind)}
    assert verdicts["colour"]["holds"] and verdicts["all"]["holds"]
    assert abs(verdicts["count"]["difference"]) < 1e-9 and not verdicts["count"]["holds"]


def test_answer_forms_tell_no_answer_and_the_wrong_type_from_answers_that_could_be_right():
    # Bugs caught: a count given to a colour question counted as a well-typed answer (the arms'
    # format differences would then pass for reading the image), a missing answer counted as wrong
    # type, pass@1 among well-typed answers taken over all answers.
    records = [{"category": "colour", "extracted": "Red", "correct": True},
               {"category": "colour", "extracted": "blue", "correct": False},
               {"category": "colour", "extracted": "2", "correct": False},
               {"category": "count", "extracted": "three", "correct": True},
               {"category": "count", "extracted": "green", "correct": False},
               {"category": "count", "extracted": None, "correct": False},
               {"category": "count", "extracted": " ", "correct": False},
               {"category": "count", "extracted": "1", "correct": False}]
    forms = answer_forms(records)
    assert forms["answers"] == 8 and forms["unanswered"] == 0.25 and forms["wrong_type"] == 0.25
    assert forms["right_of_well_typed"] == {"colour": 0.5, "count": 0.5}
    assert answer_forms([])["right_of_well_typed"] == {"colour": None, "count": None}


def test_checks_fail_on_empty_selection_dropped_samples_or_no_lift():
    base = {"all": mean_std([0.1, 0.1])}
    good = {"sophia": {"selected": [5, 5], "packed": [5, 5], "pass@1": {"all": mean_std([0.5, 0.6])}}}
    assert all(check["ok"] for check in checks(good, base))
    empty = {"sophia": {"selected": [5, 0], "packed": [5], "pass@1": {"all": mean_std([0.5])}}}
    failed = [check["check"] for check in checks(empty, base) if not check["ok"]]
    assert failed == ["arm sophia selected trajectories in every seed"]
    dropped = {"sophia": {"selected": [5, 5], "packed": [5, 4], "pass@1": {"all": mean_std([0.5, 0.6])}}}
    failed = [check["check"] for check in checks(dropped, base) if not check["ok"]]
    assert failed == ["arm sophia trained on every trajectory it selected (none over the pack length)"]
    flat = {"sophia": {"selected": [5, 5], "packed": [5, 5], "pass@1": {"all": mean_std([0.1, 0.1])}}}
    assert not all(check["ok"] for check in checks(flat, base))


def run_smoke(workdir, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "sophia_tools.ablations", "--smoke", "--workdir", str(workdir), *args],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_set_changes_the_shared_sizes_with_their_types_and_names_a_wrong_key():
    from sophia_tools.ablations.__main__ import with_shared_changes
    from sophia_tools.demo import DemoError

    changed = with_shared_changes(SMOKE_ABLATIONS, ["warmup_images=640", "captioner_lr=0.002"])
    assert (changed.shared.warmup_images, changed.shared.captioner_lr) == (640, 0.002)
    assert changed.as_record() != SMOKE_ABLATIONS.as_record()  # so a workdir made without it refuses it
    assert replace(changed.shared, warmup_images=SMOKE_ABLATIONS.shared.warmup_images,
                   captioner_lr=SMOKE_ABLATIONS.shared.captioner_lr) == SMOKE_ABLATIONS.shared
    with pytest.raises(DemoError, match="warmup_image=3.*warmup_images"):
        with_shared_changes(SMOKE_ABLATIONS, ["warmup_image=3"])
    with pytest.raises(DemoError, match="captioner_steps takes a int"):
        with_shared_changes(SMOKE_ABLATIONS, ["captioner_steps=1e-3"])


@pytest.mark.slow
def test_ablations_smoke_end_to_end_then_reused(tmp_path):
    """Smoke test (tiny sizes, one seed, 2 steps per arm): the pipeline, not the method's effect."""
    workdir = tmp_path / "ablations"
    probe = run_smoke(workdir, "--until", "rollout")  # the shared stages only, then their signals
    assert "caption reward by what the caption says" in probe.stdout
    assert (workdir / "done" / "rollout.json").is_file() and not list((workdir / "done").glob("baseline_*"))
    proc = run_smoke(workdir)
    assert f"[ablations] {'rollout':<17} reused" in proc.stdout
    report = json.loads((workdir / "ablations.json").read_text())
    assert report["table"] in proc.stdout
    assert (workdir / "ablations.png").read_bytes()[:4] == b"\x89PNG"
    assert list(report["arms"]) == [arm.name for arm in ARMS]
    assert report["eval_questions"] == SMOKE_ABLATIONS.shared.eval_images
    assert report["arms"]["random"]["selected"][0] > 0  # random selects whatever the rewards
    for name, arm in report["arms"].items():
        work = workdir / "arms" / name / "seed0"
        assert (work / "selected.jsonl").is_file()
        if arm["pass@1"]:  # trained: packed dataset, metrics and evaluation kept in the arm's directory
            assert (work / "packed" / "manifest.json").is_file()
            steps = (work / "train" / "metrics.jsonl").read_text().splitlines()
            assert len(steps) == SMOKE_ABLATIONS.steps == arm["steps"][0]
            manifest = json.loads((work / "packed" / "manifest.json").read_text())
            assert manifest["max_seq_len"] == SMOKE_ABLATIONS.pack_tokens
            records = (work / "eval" / "circles" / "records.jsonl").read_text().splitlines()
            assert len(records) == report["eval_questions"]
            assert arm["pass@1"]["all"]["values"][0] == sum(json.loads(r)["correct"] for r in records) / len(records)
    started = (workdir / "done" / "arm_random_seed0.json").stat().st_mtime
    again = run_smoke(workdir)
    assert "reused" in again.stdout and (workdir / "done" / "arm_random_seed0.json").stat().st_mtime == started


def test_rollout_signals_classify_captions_and_trajectories(tmp_path):
    """The report's signals on the hand-built store: right captions earn 3/4, vague ones 1/4; guesses,
    detours and clean trajectories are told apart, with their pass rates and lengths."""
    from sophia_tools.demo.signals import composition, rollout_signals

    demo = Demo(tmp_path, replace(SMOKE_ABLATIONS.shared, K=2, N=4), echo=lambda _: None, label="test")
    build_store(demo)
    signals = rollout_signals(tmp_path / "store", tmp_path / "task" / "rollout_inputs.jsonl", alpha=0.75)
    captions = signals["caption_reward_by_caption"]
    assert captions["right"] == {"captions": QUESTIONS, "reward_mean": 0.75, "at_or_above_alpha": 1.0}
    assert captions["vague"] == {"captions": QUESTIONS, "reward_mean": 0.25, "at_or_above_alpha": 0.0}
    assert captions["wrong"]["captions"] == 0
    assert signals["captions_by_type"] == {"count": {"right": QUESTIONS, "vague": QUESTIONS, "wrong": 0}}
    shapes = signals["length_vs_errors"]["by_class"]
    assert shapes["clean"] == {"trajectories": 2 * QUESTIONS, "mean_tokens": 20.5, "pass_rate": 1.0}
    assert shapes["detour"] == {"trajectories": 2 * QUESTIONS, "mean_tokens": 34.0, "pass_rate": 0.5}
    assert shapes["guess"] == {"trajectories": 4 * QUESTIONS, "mean_tokens": 12.0, "pass_rate": 0.25}
    terciles = signals["length_vs_errors"]["right_caption_terciles"]  # right captions: 20, 21, 34, 34 tokens
    assert terciles[-1]["detour_share"] == 1.0 and terciles[0]["detour_share"] == 0.0
    mix = composition([{"text": text, "correct": correct, "num_tokens": tokens}
                       for text, correct, tokens in TRAJECTORIES.values()])
    assert mix == {"samples": 8, "clean": 0.25, "detour": 0.25, "guess": 0.5, "wrong": 0.5, "mean_tokens": 19.625}
