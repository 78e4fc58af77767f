"""Uneven pipeline splits: one placement (``megatron_layout.stage_sizes``) that agrees with Megatron-Core,
and a planner that accounts for the vision tower on the first stage.

The round trips with uneven splits are in ``test_roundtrip.py``; the trainer with one in
``tests/sophia_megatron/test_pipeline_split.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conversion.arch import PRESETS
from conversion.megatron_layout import stage_layers, stage_sizes
from tests.multirank import REPO, subprocess_env

SPLITS = [(64, 4, None, None), (64, 4, 10, None), (64, 4, None, 22), (64, 4, 6, 22), (64, 2, 24, 40),
          (4, 2, 1, 3), (4, 2, 3, 1), (28, 1, None, None), (30, 3, 6, None), (32, 4, 5, 7)]


@pytest.mark.parametrize("layers,pp,first,last", SPLITS)
def test_stage_sizes_match_megatron(layers, pp, first, last):
    # Bug caught: a placement that differs from Megatron's (e.g. the remainder given to the last stage
    # instead of shared by the middle ones) loads layers into the wrong stage.
    import torch
    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    config = TransformerConfig(num_layers=layers, hidden_size=64, num_attention_heads=4, pipeline_model_parallel_size=pp,
                               num_layers_in_first_pipeline_stage=first, num_layers_in_last_pipeline_stage=last,
                               use_cpu_initialization=True, pipeline_dtype=torch.float32)
    ours = [stage_layers(layers, pp, rank, first, last) for rank in range(pp)]
    theirs = [range(get_transformer_layer_offset(config, pp_rank=rank),
                    get_transformer_layer_offset(config, pp_rank=rank) + get_num_layers_to_build(config, pp_rank=rank))
              for rank in range(pp)]
    assert ours == theirs
    assert sum(stage_sizes(layers, pp, first, last)) == layers


@pytest.mark.parametrize("layers,pp,first,last", [(4, 2, 1, 1), (4, 2, 4, None), (64, 4, 63, None),
                                                  (64, 4, 10, 11), (4, 2, 0, 4)])
def test_impossible_splits_are_refused(layers, pp, first, last):
    with pytest.raises(ValueError):
        stage_sizes(layers, pp, first, last)


def recipe(**parallel):
    from sophia_megatron.train.config import load_train_recipe

    overrides = [f"parallel.{k}={'null' if v is None else v}" for k, v in parallel.items()]
    return load_train_recipe(str(REPO / "configs" / "internvl3_38b.yaml"), overrides)


def test_planner_moves_layers_off_the_vision_stage():
    # Bug caught: a planner blind to the vision tower (weights, tile activations, forward FLOPs)
    # proposes the even split, and its first stage sets the pace.
    from sophia_megatron import plan

    arch, r = PRESETS["internvl3_38b"], recipe(tp=4, pp=2, first_stage_layers=None, last_stage_layers=None)
    with_images = plan.propose_split(r, arch, 4, 2, 8, tiles=64, device_gib=80.0)
    assert with_images[0] is not None and with_images[0] < 32 < with_images[1]
    even = plan.plan_stages(r, arch, 4, 2, 8, 64)
    assert even[0]["tflop"] > 1.3 * even[1]["tflop"]  # the vision forward is on stage 0 only
    assert even[0]["memory_gib"]["weights"] > even[1]["memory_gib"]["weights"]
    text_only = plan.plan_stages(r, arch, 4, 2, 8, 0)
    assert text_only[0]["tflop"] < even[0]["tflop"] - 500  # ~0.77 PFLOP of ViT-6B for 64 tiles
    best = max(s["tflop"] for s in plan.plan_stages(r, arch, 4, 2, 8, 64, *with_images))
    for split in plan.candidate_splits(64, 2):  # nothing that fits has a faster slowest stage
        stages = plan.plan_stages(r, arch, 4, 2, 8, 64, *split)
        if max(s["memory_gib"]["total"] for s in stages) <= 80 * plan.HEADROOM:
            assert max(s["tflop"] for s in stages) >= best


def test_auto_is_a_planning_mode():
    from sophia_common.config import ConfigError
    from sophia_megatron.plan import training_split

    with pytest.raises(ConfigError, match="proposed_split"):
        training_split(recipe(first_stage_layers="auto", last_stage_layers=None))
    assert training_split(recipe()) == (24, 40)
    assert training_split(recipe(pp=1)) == (None, None)  # one stage holds every layer


def dry_run(*overrides: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "sophia_tools.train_cli", "--config",
                           str(REPO / "configs" / "internvl3_38b.yaml"), "--dry-run", *overrides], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_38b_recipe_is_balanced_and_auto_agrees():
    # The acceptance figures of the 38B layout (planned): memory within 1.3x, compute within 1.2x,
    # and the recipe's split is the one `auto` proposes.
    report = dry_run()
    assert [s["layers"] for s in report["stages"]] == [24, 40]
    assert report["memory_max_over_min"] <= 1.3 and report["compute_max_over_min"] <= 1.2, report
    auto = dry_run("parallel.first_stage_layers=auto", "parallel.last_stage_layers=null")
    assert (auto["first_stage_layers"], auto["last_stage_layers"]) == (24, 40)
    even = dry_run("parallel.first_stage_layers=null", "parallel.last_stage_layers=null")
    assert even["compute_max_over_min"] > report["compute_max_over_min"]
