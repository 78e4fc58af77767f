"""The recipe's ``grpo:`` section: the on-policy GRPO continuation (``sophia-train train.mode=grpo``).

The Megatron sections (``model``, ``parallel``, ``train``, ``checkpoint``, ``logging``, ``fp8``) are
the SOPHIA update's, read by ``sophia_megatron.train.config``; ``grpo.lr`` and ``grpo.steps``
replace ``train.lr`` and ``train.steps`` (the paper continues with lr 5e-7), the rest of the
optimizer and schedule settings carry over. ``grpo.generator`` is the rollout's ``EngineConfig``
(the policy's HF checkpoint, whose weights are replaced by the trainer's at start and after every
update), ``grpo.filter`` the question filter's settings (``sophia-rollout filter``), ``grpo.judge``
the served judge of ``grpo.reward=judge`` (the rollout's ``JudgeConfig``, the keys of
``rollout.verifier.judge``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from rollout.config import JudgeConfig, VerifierConfig
from rollout.engine_api import EngineConfig
from rollout.question_filter import FilterSection
from rollout.rl_rewards import RewardSettings, SrpoSettings
from sophia_common.config import ConfigError, build, doc, read_recipe


@dataclass
class GrpoSection:
    questions: str = doc("training questions (rollout-input JSONL, e.g. grpo.filter.out)", "")
    eval_questions: str | None = doc("held-out questions for greedy pass@1 (null: no evaluation)", None)
    eval_interval: int = doc("evaluate every N steps (and before the first and after the last)", 0)
    eval_max_tokens: int = doc("most new tokens of an evaluation answer", 16384)
    eval_samples: int = doc("answers per held-out question at grpo.temperature (pass@1 = their mean correctness, "
                            "fixed seeds); 0: one greedy answer", 0)
    steps: int = doc("GRPO steps (one optimizer step each); replaces train.steps", 100)
    lr: float = doc("learning rate (paper: 5e-7); replaces train.lr", 5e-7)
    questions_per_step: int = doc("questions sampled per step (paper: 64)", 64)
    rollouts_per_question: int = doc("rollouts per question, the group size (paper: 8)", 8)
    advantage: Literal["grpo", "dr_grpo"] = doc("grpo: (r - mean) / std, token-mean loss; dr_grpo: r - mean, "
                                                "loss / (sequences x max_tokens)", "grpo")
    clip_eps: float = doc("PPO clipping of the ratio to the generator's logprobs (paper: 0.2)", 0.2)
    kl_coef: float = doc("weight of a k3 KL to the frozen start policy (paper: 0, no KL)", 0.0)
    temperature: float = doc("sampling temperature of the rollouts", 1.0)
    top_p: float = doc("nucleus mass of the rollouts", 1.0)
    max_tokens: int = doc("most new tokens per rollout (paper: 16384)", 16384)
    max_tiles: int = doc("image tiles per question", 12)
    system_prompt: str | None = doc("system prompt file of rollouts and evaluation (slow-thinking)", None)
    micro_batch_tokens: int = doc("tokens packed into one micro-batch of the update", 32768)
    seed: int = doc("seed of the question order and of every rollout (hash(seed, step, id))", 0)
    reward: Literal["outcome", "judge", "srpo"] = doc("reward plug-in: outcome (rule verifier), judge (served "
                                                      "model), srpo (reflection-aware)", "outcome")
    judge: JudgeConfig = doc("the served judge of reward judge: the keys of rollout.verifier.judge "
                             "(grpo.reward=judge turns it on, not judge.enabled)",
                             default_factory=JudgeConfig)
    srpo: SrpoSettings = field(default_factory=SrpoSettings)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    generator: EngineConfig = field(default_factory=EngineConfig)
    filter: FilterSection = field(default_factory=FilterSection)
    save_rollouts: bool = doc("write every step's rollouts to checkpoint.save_dir/rollouts/ (JSONL)", True)
    vllm_sleep_mode: bool = doc("engine vllm: put vLLM to sleep during the update (weights to host memory, KV "
                                "cache freed) so the colocated trainer gets the GPU memory; GPU only, vLLM's CPU "
                                "backend has no sleep mode", False)
    sync_chunk_mb: int = doc("engine vllm: megabytes of weights per weight-sync RPC into vLLM", 512)

    def __post_init__(self) -> None:
        if self.rollouts_per_question < 2:
            raise ValueError("grpo.rollouts_per_question must be >= 2 (advantages are group-relative)")
        if self.questions_per_step < 1 or self.steps < 1 or self.max_tokens < 1:
            raise ValueError("grpo.questions_per_step, grpo.steps and grpo.max_tokens must be >= 1")
        if self.sync_chunk_mb < 1:
            raise ValueError("grpo.sync_chunk_mb must be >= 1")
        if not 0 < self.clip_eps < 1 or self.kl_coef < 0:
            raise ValueError("need 0 < grpo.clip_eps < 1 and grpo.kl_coef >= 0")
        if self.reward == "judge" and not (self.judge.model and (self.judge.base_url or self.judge.endpoint_file)):
            raise ValueError("grpo.reward=judge needs grpo.judge.model (the served judge's name) and "
                             "grpo.judge.base_url (http://HOST:PORT) or grpo.judge.endpoint_file")
        if self.judge.enabled and self.reward != "judge":
            raise ValueError(f"grpo.judge.enabled is true but grpo.reward is {self.reward}: the judge reward is "
                             "turned on by grpo.reward=judge")

    @property
    def rewards(self) -> RewardSettings:
        return RewardSettings(kind=self.reward, judge=self.judge, srpo=self.srpo)


def load_grpo(path: str | None, overrides: list[str]) -> GrpoSection:
    raw = read_recipe(path, overrides).get("grpo")
    if not raw:
        raise ConfigError(f"{path or 'overrides'}: train.mode=grpo needs a grpo: section")
    grpo = build(GrpoSection, raw, "grpo")
    if not grpo.questions:
        raise ConfigError(f"{path or 'overrides'}: grpo.questions is not set (the filtered questions)")
    if not grpo.generator.model:
        raise ConfigError(f"{path or 'overrides'}: grpo.generator.model is not set (the policy's HF checkpoint)")
    return grpo


def grpo_train_recipe(recipe: object, grpo: GrpoSection) -> object:
    """The SOPHIA recipe with GRPO's learning rate and step count."""
    train = dataclasses.replace(recipe.train, lr=grpo.lr, steps=grpo.steps)
    return dataclasses.replace(recipe, train=train)
