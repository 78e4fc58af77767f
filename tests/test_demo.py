"""``make demo``: the pieces the demo adds (fast), and a smoke run of the whole loop (slow).

Fast checks (no subprocess) cover the synthetic task (deterministic files; the generators really
make caption rewards and trajectory lengths informative), the reasoner's prompt rendering (the same
text ``sophia-rollout reason`` sends), the caption check, the caption engine the demo's rollout
commands ask for (vLLM, transformers as the fallback), the workdir guard, and the checks a full-size
run must pass (trajectories selected; held-out pass@1 after the update above before it). The
full-size run is too slow for the suite (about 10 minutes on 2 cores): ``make demo`` makes
those checks itself and exits non-zero when one fails, and ``make ablations`` makes them for every
arm and seed. The ``--fast`` run below is a smoke test of the pipeline: at its sizes the models are
barely warmed up, so it asserts that every number in the summary is the one its stage's files hold,
not that the method works.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from sophia_tools.demo import FAST, FULL, Demo, DemoError, override
from sophia_tools.demo.signals import trajectory_class
from sophia_tools.demo.summary import full_run_checks
from sophia_tools.demo.task import (
    QUESTIONS,
    caption_class,
    describe,
    draw,
    random_scene,
    reasoner_rows,
    states_answer,
    trajectory,
    write_task,
)
from tests.multirank import REPO, subprocess_env

STAGES = ["fixtures", "task", "warmup_captioner", "warmup_reasoner", "convert_policy", "rollout", "pack",
          "train", "verify", "evaluate"]


def test_task_files_are_deterministic_and_consistent(tmp_path):
    sizes = dict(images=6, warmup_images=4, reasoner_samples=10, mix_samples=2, eval_images=2, seed=3)
    first = write_task(tmp_path / "a", caption_prompt="Describe.", **sizes)
    write_task(tmp_path / "b", caption_prompt="Describe.", **sizes)
    for name in first["files"]:
        first_bytes = (tmp_path / "a" / f"{name}.jsonl").read_bytes()
        assert first_bytes == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
    assert first["rows"]["eval_inputs"] == 2
    rows = [json.loads(line) for line in (tmp_path / "a" / "rollout_inputs.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {row["question"] for row in rows} == set(QUESTIONS.values())
    assert all((tmp_path / "a" / row["image"]).is_file() for row in rows)
    for line in (tmp_path / "a" / "reasoner_sft.jsonl").read_text().splitlines():
        row = json.loads(line)  # no vague descriptions, no detours: the target answers what it says
        boxed = row["response"].rsplit("\\boxed{", 1)[1].rstrip("}")
        assert states_answer(row["caption"], boxed) and trajectory_class(row["response"]) == "clean"


def _boxed(text: str) -> str:
    return text.rsplit("\\boxed{", 1)[1].rstrip("}")


def test_reasoner_targets_make_caption_reward_and_length_informative():
    """By construction: guesses come only from descriptions that leave the asked attribute out and
    are the shortest; detours are longer than clean trajectories and half of them end wrong; clean
    ones answer what the description says."""
    rows = reasoner_rows(2000, seed=7, vague_share=0.3, detour_share=0.4)
    by_shape: dict[str, list[dict]] = {"clean": [], "detour": [], "guess": []}
    for row in rows:
        kind = "count" if row["question"] == QUESTIONS["count"] else "colour"
        answer, shape = _boxed(row["response"]), trajectory_class(row["response"])
        said = caption_class(row["caption"], answer)
        by_shape[shape].append({"said": said, "length": len(row["response"]), "kind": kind,
                                "follows": said == "right"})
        if shape == "guess":
            assert said in ("vague", "right")  # the description does not state the attribute
            assert caption_class(row["caption"], "2" if kind == "count" else "red") == "vague"
        if shape == "clean":
            assert said == "right"  # answers exactly what the description says
    shares = {shape: len(members) / len(rows) for shape, members in by_shape.items()}
    assert 0.08 < shares["guess"] < 0.22 and 0.28 < shares["detour"] < 0.45
    ended_right = sum(member["follows"] for member in by_shape["detour"]) / len(by_shape["detour"])
    assert 0.4 < ended_right < 0.6
    longest_guess = max(m["length"] for m in by_shape["guess"])
    for kind in ("colour", "count"):
        clean = [m["length"] for m in by_shape["clean"] if m["kind"] == kind]
        detours = [m["length"] for m in by_shape["detour"] if m["kind"] == kind]
        assert min(detours) > max(clean) and longest_guess < min(clean) + 20
        guesses = [m["length"] for m in by_shape["guess"] if m["kind"] == kind]
        assert max(guesses) < sorted(clean)[len(clean) // 2]  # a lucky guess beats a typical clean one


def test_full_run_checks_fail_without_selection_or_lift():
    def numbers(selected, before, after):
        return {"selected": selected, "policy_eval": {"before": {"correct": before}, "after": {"correct": after}}}

    assert all(check["ok"] for check in full_run_checks(numbers(10, 0, 8)))
    assert [check["ok"] for check in full_run_checks(numbers(0, 0, 8))] == [False, True]
    assert [check["ok"] for check in full_run_checks(numbers(10, 5, 5))] == [True, False]


def test_caption_check():
    assert states_answer(describe("red", 2), "red") and states_answer(describe("red", 2), "2")
    assert not states_answer(describe("red", 2), "blue") and not states_answer(describe("red", 2), "3")
    assert not states_answer("The image shows two three red circles.", "2")  # contradicting itself
    assert trajectory("count", "red", 1).endswith("\\boxed{1}")


def test_reasoner_prompt_matches_the_rollout():
    from rollout.prompts import Prompts, PromptsConfig
    from sophia_tools.demo.__main__ import prompt_file
    from sophia_tools.demo.warmup import simulated_seeing

    prompts = Prompts.load(PromptsConfig(), REPO / "configs")
    template = prompt_file("simulated_seeing").read_text().strip()
    cases = (("<image>\nHow many?", describe("blue", 3)), ("What colour? {caption}", " x {question}"))
    for question, caption in cases:
        (message,) = prompts.reasoning_messages(question, caption)
        assert simulated_seeing(template, question, caption) == message["content"]


def test_workdir_refuses_other_settings(tmp_path):
    Demo(tmp_path, FAST, echo=lambda _: None).check_settings()
    Demo(tmp_path, FAST, echo=lambda _: None).check_settings()
    with pytest.raises(DemoError, match=r"made with the --fast \(vllm captioner\) settings, this run asks for "
                                        r"the full \(vllm captioner\)"):
        Demo(tmp_path, FULL, echo=lambda _: None).check_settings()
    with pytest.raises(DemoError, match=r"asks for the --fast \(transformers captioner\) ones"):
        Demo(tmp_path, replace(FAST, captioner_engine="transformers"), echo=lambda _: None).check_settings()
    assert override("a.b", tmp_path / "x y") == f'a.b="{tmp_path}/x y"'


def test_demo_captions_on_vllm_with_the_recipe_cpu_options_and_falls_back_to_transformers(tmp_path):
    """The rollout commands the demo (and the ablations) run caption on vLLM in eager mode, fp32, with
    room for a tile's 256 image tokens; ``--captioner-engine transformers`` switches only the engine."""
    from rollout.config import load_config
    from sophia_tools.demo import RECIPE
    from sophia_tools.demo.__main__ import rollout_overrides

    def captioner(settings):
        return load_config(RECIPE, rollout_overrides(Demo(tmp_path, settings, echo=lambda _: None))).captioner

    on_vllm = captioner(FULL)
    assert (on_vllm.engine, on_vllm.dtype, on_vllm.enforce_eager) == ("vllm", "float32", True)
    assert on_vllm.max_model_len >= 256 + 512 and on_vllm.K == FULL.K and on_vllm.max_tokens == FULL.caption_max_tokens
    fallback = captioner(replace(FAST, captioner_engine="transformers"))
    assert fallback.engine == "transformers" and fallback.K == FAST.K
    with pytest.raises(DemoError, match="captioner engine 'tgi'"):
        captioner(replace(FAST, captioner_engine="tgi"))


def test_failing_stage_names_itself_and_shows_the_log(tmp_path):
    demo = Demo(tmp_path, FAST, echo=lambda _: None)
    with pytest.raises(DemoError) as error:
        demo.stage("broken", lambda: {"out": demo.run("step", [sys.executable, "-c",
                                                               "print('boom'); raise SystemExit(3)"])})
    assert "stage 'broken' failed" in str(error.value) and "boom" in str(error.value)
    assert not (tmp_path / "done" / "broken.json").exists()
    with pytest.raises(DemoError, match="stage 'parse' failed: KeyError"):
        demo.stage("parse", lambda: {}["missing"])


def run_demo(workdir) -> dict:
    proc = subprocess.run([sys.executable, "-m", "sophia_tools.demo", "--workdir", str(workdir), "--fast"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["table"] in proc.stdout
    return summary


def check_selection_against_the_store(workdir, alpha: float) -> int:
    """Every selected trajectory is what Eq. 6 picks from the store's scores: correct, caption reward
    >= alpha, the shortest such of its question (ties to the lower k, n); returns how many."""
    from sophia_tools.demo.signals import read_table

    scores = read_table(workdir / "store" / "scores", ["id", "k", "n", "correct", "caption_reward", "num_tokens"])
    selected = [json.loads(line) for line in (workdir / "store" / "selected.jsonl").read_text().splitlines()]
    for row in selected:
        question = row.get("question_id", row["id"])
        eligible = [s for s in scores if s["id"] == question and s["correct"] and s["caption_reward"] + 1e-9 >= alpha]
        best = min(eligible, key=lambda s: (s["num_tokens"], s["k"], s["n"]))
        assert (row["k"], row["n"]) == (best["k"], best["n"])
    decided = {s["id"] for s in scores if s["correct"] and s["caption_reward"] + 1e-9 >= alpha}
    assert len(selected) == len(decided)  # one per question that has an eligible trajectory
    return len(selected)


@pytest.mark.slow
def test_demo_smoke_fast_end_to_end_then_reused(tmp_path):
    """Smoke test (--fast sizes): every number of the summary is the one its stage's files hold.
    Whether the method works (trajectories selected, pass@1 lifted) is checked by the full-size run."""
    from sophia_tools.demo.signals import read_table

    workdir = tmp_path / "demo"
    summary = run_demo(workdir)
    n, settings = summary["numbers"], summary["settings"]
    assert list(summary["stages"]) == STAGES and not any(s["reused"] for s in summary["stages"].values())
    assert n["images"] == n["questions"] == FAST.images
    assert n["captions"] == n["images"] * settings["K"]
    assert n["trajectories"] == n["scores"] == n["captions"] * settings["N"]
    scores = read_table(workdir / "store" / "scores", ["correct"])
    assert n["correct"] == sum(row["correct"] for row in scores) and n["questions_decided"] == n["questions"]
    assert n["selected"] == check_selection_against_the_store(workdir, n["alpha"])
    assert sum(n["pack_sources"].values()) == n["packed_samples"]
    assert n["pack_sources"]["selected.jsonl"] == n["selected"]
    assert len(n["loss"]) == settings["sophia_steps"] and all(v == v and v > 0 for v in n["loss"])
    assert n["loss_first"] == n["loss"][0] and n["loss_last"] == n["loss"][-1]
    assert n["verify_max_abs_diff"] <= 1e-4
    # The policy captioned on real vLLM: the caption table's provenance names the engine, and the
    # warmed-up export kept the image tokens vLLM's InternVL processor reads from the tokenizer config.
    caption_table = json.loads((workdir / "store" / "captions" / "_table.json").read_text())
    assert n["captioner_engine"] == caption_table["provenance"]["captioner"]["engine"] == "vllm"
    exported = json.loads((workdir / "warmup" / "captioner" / "hf" / "tokenizer_config.json").read_text())
    assert exported["extra_special_tokens"]["context_image_token"] == "<IMG_CONTEXT>"
    lm, frozen = n["tensors"]["language_model"], n["tensors"]["frozen_vision_and_projector"]
    assert lm["changed"] == lm["tensors"] > 0 and frozen["changed"] == 0 < frozen["tensors"]
    for name in ("loss_png", "lengths_png"):
        assert (workdir / summary["files"][name].rsplit("/", 1)[-1]).read_bytes()[:4] == b"\x89PNG"
    metrics = [json.loads(line) for line in (workdir / "sophia" / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in metrics] == n["loss"]  # the summary's losses are the trainer's own
    for when in ("before", "after"):  # the policy answered every held-out question; the verifier scored them
        records = [json.loads(line) for line in
                   (workdir / "evaluate" / when / "circles" / "records.jsonl").read_text().splitlines()]
        evaluation = n["policy_eval"][when]
        assert evaluation["questions"] == len(records) == FAST.eval_images
        assert evaluation["correct"] == sum(bool(r["correct"]) for r in records)
        assert all(r["response"] is not None and r["correct"] is not None for r in records)

    again = run_demo(workdir)
    assert all(stage["reused"] for stage in again["stages"].values())
    assert again["numbers"] == n and again["wall_seconds"] < 30


def test_batched_engine_answers_as_the_one_at_a_time_engine(tiny_root, tmp_path):
    """Left padding done right: greedy answers of a batch equal those of one request at a time
    (a right-padded or mask-less batch changes every answer but the longest prompt's)."""
    import random

    from rollout.engine_api import EngineConfig, Request, SamplingParams
    from rollout.engines import TransformersEngine
    from sophia_tools.demo.heldout import BatchedTransformersEngine

    scenes = [random_scene(random.Random(seed)) for seed in range(3)]
    for index, scene in enumerate(scenes):
        draw(scene).save(tmp_path / f"{index}.png")
    questions = ["What colour are the shapes in the image?", "How many?", "Describe the image in detail, please."]
    requests = [Request([{"role": "user", "content": question}], key=f"q{index}", image=tmp_path / f"{index}.png")
                for index, question in enumerate(questions)]
    config = EngineConfig(model=str(tiny_root["vit300m_qwen2_hf"]), engine="transformers", temperature=0.0,
                          max_tokens=12, dtype="float32")
    params = SamplingParams.of(config, 1)
    with TransformersEngine(config, "test", vision=True, max_tiles=1) as engine:
        one_by_one = engine.generate(requests, params)
    with BatchedTransformersEngine(config, "test", vision=True, max_tiles=1) as engine:
        batched = engine.generate(requests, params)
    assert [[c.text for c in out] for out in batched] == [[c.text for c in out] for out in one_by_one]
    assert [out[0].num_tokens for out in batched] == [out[0].num_tokens for out in one_by_one]
