"""GRPO raises held-out pass@1 of the warmed-up tiny policy on the demo's circle task (fixed seeds).

pass@1 here is the loop's own evaluation (``grpo.eval_questions``): the mean correctness, by the rule
verifier, of 4 answers per held-out question sampled at temperature 1 with the same seeds before the
first step and after the last (16 held-out images, colour and count questions), measured on the
generator inside the loop so that the test needs no export. Measured on cpu-2c: 0.219 before, 0.266
after 12 steps. ``sophia-eval run`` (top-p 0.8, its own seeds) on the warmed-up and on the exported
GRPO model gave 25.0 and 25.0 (standard errors 6.9 and 9.1): the gain is small against the noise of
64 answers, see docs/GRPO.md.
"""

from __future__ import annotations

import json

import pytest

from tests.grpo.conftest import grpo_recipe
from tests.grpo.test_loop import sophia_train


@pytest.mark.slow
def test_grpo_raises_held_out_pass_at_1(warm_policy, tmp_path):
    recipe = grpo_recipe(tmp_path, warm_policy, steps=12, questions_per_step=4, eval_questions=str(warm_policy["eval"]),
                         eval_samples=4, eval_max_tokens=12, save_rollouts=False)
    sophia_train(recipe)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = {line["step"]: line["eval_pass@1"] for line in lines if "eval_pass@1" in line}
    assert set(evals) == {0, 12}
    assert evals[12] > evals[0], f"held-out pass@1 {evals[0]:.3f} -> {evals[12]:.3f}"
    assert sum(not line["skipped"] for line in lines if "loss" in line) >= 10  # it really trained
