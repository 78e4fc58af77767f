"""The grpo: recipe section: every shipped recipe validates, with the paper's settings; bad input is named."""

from __future__ import annotations

import pytest
import yaml

from sophia_common.config import ConfigError, build, read_recipe
from sophia_tools.grpo.config import GrpoSection, load_grpo
from tests.multirank import REPO

BIG = ["internvl3_38b", "internvl2_5_38b", "internvl3_8b", "internvl2_5_8b"]


@pytest.mark.parametrize("name", [*BIG, "tiny"])
def test_recipes_validate(name):
    build(GrpoSection, read_recipe(REPO / "configs" / f"{name}.yaml")["grpo"], "grpo")


@pytest.mark.parametrize("name", BIG)
def test_paper_settings(name):
    g = build(GrpoSection, read_recipe(REPO / "configs" / f"{name}.yaml")["grpo"], "grpo")
    assert (g.lr, g.questions_per_step, g.rollouts_per_question, g.clip_eps, g.kl_coef, g.max_tokens) == (
        5e-7, 64, 8, 0.2, 0.0, 16384)
    assert (g.filter.samples, g.filter.min_pass_rate, g.filter.max_pass_rate) == (16, 0.4, 0.6)
    assert (g.srpo.alpha, g.srpo.target_ratio, g.srpo.max_ratio) == (0.1, 2.0, 2.5)


def test_bad_input_names_the_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"grpo": {"questions": "q.jsonl", "generator": {"model": "m"},
                                               "advantge": "grpo"}}))
    with pytest.raises(ConfigError, match=r"grpo\.advantge"):
        load_grpo(str(recipe), [])
    with pytest.raises(ConfigError, match="rollouts_per_question must be >= 2"):
        load_grpo(None, ["grpo.questions=q", "grpo.generator.model=m", "grpo.rollouts_per_question=1"])
    with pytest.raises(ConfigError, match="grpo.questions is not set"):
        load_grpo(None, ["grpo.generator.model=m"])


@pytest.mark.parametrize("extra,message", [
    ([], "grpo.questions is not set"),
    (["grpo.questions=q.jsonl", "grpo.generator.engine=openai"], "openai cannot take the trainer's weights"),
])
def test_sophia_train_grpo_refuses_with_one_line(tmp_path, extra, message):
    import subprocess
    import sys

    from tests.multirank import subprocess_env

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"mcore_dir": str(tmp_path)}, "train": {"mode": "grpo"},
                                      "grpo": {"generator": {"model": str(tmp_path)}}}))
    proc = subprocess.run([sys.executable, "-m", "sophia_tools.train_cli", "--config", str(recipe), *extra],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0  # one line, no traceback


def test_judge_reward_takes_the_rollout_judge_keys_and_needs_a_server():
    """grpo.judge is rollout.verifier.judge's JudgeConfig; reward=judge without a server or model is named
    at load time, and judge.enabled cannot pretend to turn the judge on under another reward."""
    base = ["grpo.questions=q.jsonl", "grpo.generator.model=m", "grpo.reward=judge"]
    grpo = load_grpo(None, [*base, "grpo.judge.model=J", "grpo.judge.base_url=http://h:1",
                            "grpo.judge.on_error=rules", "grpo.judge.concurrency=3"])
    assert (grpo.rewards.judge.model, grpo.rewards.judge.on_error, grpo.rewards.judge.concurrency) == ("J", "rules", 3)
    with pytest.raises(ConfigError, match=r"grpo.reward=judge needs grpo.judge.model .* grpo.judge.base_url"):
        load_grpo(None, [*base, "grpo.judge.model=J"])
    with pytest.raises(ConfigError, match=r"grpo\.judge\.url"):  # the old key is refused, not ignored
        load_grpo(None, [*base, "grpo.judge.url=http://h:1"])
    with pytest.raises(ConfigError, match="turned on by grpo.reward=judge"):
        load_grpo(None, ["grpo.questions=q", "grpo.generator.model=m", "grpo.judge.enabled=true",
                         "grpo.judge.model=J", "grpo.judge.base_url=http://h:1"])
