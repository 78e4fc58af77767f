"""A warmed-up tiny policy on the demo's circle task, built once per session for the GRPO tests.

The tiny InternVL (``sophia_tools.tiny``) is fine-tuned briefly (``sophia_tools.grpo.warmup``) to answer
``\\boxed{X}`` with the gold answer 40 % of the time, then converted to Megatron (TP=1), so GRPO starts
from a policy whose groups have pass rates strictly between 0 and 1, as after SOPHIA in the paper.
``reading_policy`` (70 % right targets, longer) is the held-out improvement test's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

WARMUP_STEPS = 60
# The held-out improvement test's policy: the warm-up's targets are right 70 % of the time, which
# pays the policy to read the image (a uniform guess costs ~0.45 nats more per answer than reading it;
# at 40 % it is ~0.05), so the warm-up starts an image -> answer mapping that GRPO can sharpen.
READING_WARMUP = {"steps": 150, "p_correct": 0.7}


def build_warm_policy(root: Path, tiny_hf: Path, *, steps: int, p_correct: float) -> dict[str, Path]:
    """The demo's circle task (32 training and 16 held-out images) and the tiny policy warmed up on it
    (``p_correct``: share of right targets), transformers-native and converted to Megatron (TP=1)."""
    import torch

    from conversion.convert import hf_to_mcore
    from sophia_tools.demo.task import write_task
    from sophia_tools.grpo.warmup import warm_up

    write_task(root / "task", images=32, warmup_images=0, reasoner_samples=0, mix_samples=0, caption_prompt="x",
               eval_images=16, seed=5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        warm_up(tiny_hf, root / "task" / "rollout_inputs.jsonl", root / "hf", system=None, steps=steps,
                p_correct=p_correct, lr=5e-3, batch_size=8)
    finally:
        torch.set_num_threads(threads)
    hf_to_mcore(root / "hf", root / "mcore", tp=1, pp=1)
    return {"root": root, "hf": root / "hf", "mcore": root / "mcore", "questions": root / "task" / "rollout_inputs.jsonl",
            "eval": root / "task" / "eval_inputs.jsonl"}


@pytest.fixture(scope="session")
def warm_policy(tiny_root, tmp_path_factory) -> dict[str, Path]:
    return build_warm_policy(tmp_path_factory.mktemp("grpo"), tiny_root["vit300m_qwen2_hf"], steps=WARMUP_STEPS,
                             p_correct=0.4)


@pytest.fixture(scope="session")
def reading_policy(tiny_root, tmp_path_factory) -> dict[str, Path]:
    return build_warm_policy(tmp_path_factory.mktemp("grpo_reading"), tiny_root["vit300m_qwen2_hf"], **READING_WARMUP)


def grpo_recipe(out: Path, policy: dict[str, Path], **grpo) -> Path:
    """A GRPO recipe for the warmed-up policy writing under ``out``; ``grpo`` overrides grpo: keys."""
    settings = {"questions": str(policy["questions"]), "steps": 4, "lr": 5e-4, "questions_per_step": 2,
                "rollouts_per_question": 4, "max_tokens": 12, "max_tiles": 1, "micro_batch_tokens": 700,
                "generator": {"model": str(policy["hf"]), "engine": "transformers", "dtype": "float32", "seed": 0},
                **grpo}
    recipe = {"model": {"mcore_dir": str(policy["mcore"])}, "parallel": {"tp": 1, "pp": 1},
              "train": {"mode": "grpo", "max_seq_len": 4096, "min_lr_ratio": 1.0},
              "checkpoint": {"save_dir": str(out / "ckpt"), "save_interval": 0},
              "logging": {"metrics_file": str(out / "metrics.jsonl"), "tensorboard_dir": str(out / "tb")},
              "grpo": settings}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path
