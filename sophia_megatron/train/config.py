"""Recipe sections read by ``sophia-train``: model, parallel, train, data, checkpoint, logging, fp8.

Each field is documented; ``configs/*.yaml`` hold the values, ``key=value`` overrides win.
Validation happens here, at load time, before any process group exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sophia_common.config import ConfigError, build, doc, read_recipe


@dataclass
class ModelSection:
    mcore_dir: str = doc("converted checkpoint to start from (sophia-convert hf-to-mcore)")
    arch: str | None = doc("architecture preset (internvl2_5_8b, internvl3_8b, internvl2_5_38b, internvl3_38b) "
                           "used by --dry-run before mcore_dir exists", None)
    spec: Literal["local", "te"] = doc("layer spec: 'te' (Transformer Engine, GPU) or 'local' (CPU)", "local")
    params_dtype: Literal["float32", "bfloat16"] = doc("dtype of the language model weights", "float32")
    vision_dtype: Literal["float32", "bfloat16"] = doc("dtype of the frozen vision path (bf16 at most on GPU)",
                                                       "float32")


@dataclass
class ParallelSection:
    tp: int = doc("tensor-parallel size of the language model", 1)
    pp: int = doc("pipeline-parallel size (the vision path lives on the first stage)", 1)
    sequence_parallel: bool = doc("Megatron sequence parallelism (needs tp > 1)", False)
    recompute: Literal["none", "selective", "full"] = doc(
        "activation recomputation: 'selective' (attention core), 'full' (every layer's input only)", "none")
    world_size: int | None = doc("GPUs the job runs on (for --dry-run; at run time the launcher decides)", None)
    first_stage_layers: int | Literal["auto"] | None = doc(
        "language layers on the first pipeline stage, which also runs the frozen vision tower (null: an even "
        "split; 'auto': the split sophia-train --dry-run proposes, also filling last_stage_layers; "
        "ignored when pp is 1)", None)
    last_stage_layers: int | None = doc(
        "language layers on the last pipeline stage, which also holds the output layer and loss (null: an "
        "even share); the middle stages share the remaining layers evenly; ignored when pp is 1", None)


@dataclass
class TrainSection:
    mode: Literal["sophia", "sft", "grpo"] = doc("'sophia': reward-weighted update; 'sft': every weight 1 "
                                                 "(warm-up); 'grpo': on-policy GRPO (grpo: section)", "sophia")
    steps: int = doc("optimizer steps", 10)
    packs_per_step: int = doc("packs per optimizer step over all data-parallel ranks (one pack = one "
                              "micro-batch); 0 derives it from global_batch_sequences", 0)
    global_batch_sequences: int = doc("target sequences per step (paper: 512); used when packs_per_step is 0 "
                                      "with the dataset's mean samples per pack", 512)
    lr: float = doc("peak learning rate (paper: 2e-5)", 2e-5)
    min_lr_ratio: float = doc("cosine decay ends at lr * min_lr_ratio (paper: lr/4)", 0.25)
    warmup_steps: int = doc("linear warm-up steps", 0)
    weight_decay: float = doc("AdamW weight decay (paper: 0.05)", 0.05)
    adam_beta1: float = doc("AdamW beta1", 0.9)
    adam_beta2: float = doc("AdamW beta2", 0.95)
    clip_grad: float = doc("gradient-norm clipping", 1.0)
    seed: int = doc("seed of weights-independent randomness (data order, dropout)", 1234)
    loss_normalization: Literal["token", "sample"] = doc(
        "'token': sum of weighted token NLL / loss tokens in the global batch; 'sample': mean over samples "
        "of (weight x mean token NLL of the sample)", "token")
    max_nonfinite_in_row: int = doc("abort after this many consecutive non-finite losses (each is skipped)", 3)
    max_seq_len: int = doc("longest pack the model accepts (docs/ALGORITHM.md §1.2: 32768)", 32768)
    exit_interval: int = doc("checkpoint and exit when the step is a multiple of this (0: never); like "
                             "Megatron-LM's --exit-interval, for time-boxed jobs and preemption drills", 0)


@dataclass
class DataSection:
    path: str = doc("packed dataset directory (sophia-rollout pack)")
    seed: int = doc("seed of the pack order (epoch e uses seed + e)", 0)


@dataclass
class CheckpointSection:
    save_dir: str | None = doc("where distributed checkpoints go (null: no checkpoints)", None)
    save_interval: int = doc("save every N steps (0: only at the end)", 0)
    resume: bool = doc("continue from the latest checkpoint in save_dir when there is one", True)
    export_hf: str | None = doc("export the final model to this HF directory (source format)", None)
    export_force: bool = doc("replace an existing export_hf directory (otherwise the run refuses to start)",
                             False)


@dataclass
class LoggingSection:
    log_interval: int = doc("print metrics every N steps", 1)
    tensorboard_dir: str | None = doc("TensorBoard event directory (null: off)", None)
    wandb_project: str | None = doc("Weights & Biases project (null: off; needs `pip install wandb`)", None)
    metrics_file: str | None = doc("JSON-lines file with every step's metrics (rank 0)", None)


@dataclass
class Fp8Section:
    recipe: Literal["none", "delayed", "tensorwise", "blockwise"] = doc(
        "Transformer Engine FP8 recipe for the language model (GPU only; vision stays bf16)", "none")
    bf16_first_last_layers: int = doc("keep this many first and last LM layers in bf16", 0)


@dataclass
class TrainRecipe:
    model: ModelSection
    data: DataSection
    parallel: ParallelSection = field(default_factory=ParallelSection)
    train: TrainSection = field(default_factory=TrainSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    fp8: Fp8Section = field(default_factory=Fp8Section)

    def __post_init__(self) -> None:
        problems = []
        if self.parallel.tp < 1 or self.parallel.pp < 1:
            problems.append("parallel.tp and parallel.pp must be >= 1")
        if self.parallel.first_stage_layers == "auto" and self.parallel.last_stage_layers is not None:
            problems.append("parallel.first_stage_layers=auto chooses last_stage_layers too; set it to null")
        if self.parallel.sequence_parallel and self.parallel.tp == 1:
            problems.append("parallel.sequence_parallel needs parallel.tp > 1")
        if self.train.steps < 1:
            problems.append("train.steps must be >= 1")
        if self.fp8.recipe != "none" and self.model.spec != "te":
            problems.append("FP8 needs model.spec=te (Transformer Engine layers)")
        if problems:
            raise ValueError("; ".join(problems))


def fp8_problems(recipe: TrainRecipe) -> list[str]:
    """FP8 is a GPU feature of Transformer Engine: say clearly why it cannot run on this host.

    Checked when training starts (not at recipe load), so ``--dry-run`` of an FP8 recipe works
    on a login node without GPUs.
    """
    import importlib.util

    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append(f"fp8.recipe={recipe.fp8.recipe} needs a GPU (none is visible); set fp8.recipe=none")
    if importlib.util.find_spec("transformer_engine") is None:
        problems.append(f"fp8.recipe={recipe.fp8.recipe} needs Transformer Engine (`import transformer_engine` "
                        "fails); use an NGC PyTorch container or set fp8.recipe=none")
    return problems


def check_runtime(recipe: TrainRecipe) -> None:
    """Refuse, with one clear message, a recipe this host cannot run."""
    from pathlib import Path

    problems = fp8_problems(recipe) if recipe.fp8.recipe != "none" else []
    if not Path(recipe.model.mcore_dir).is_dir():
        problems.append(f"model.mcore_dir {recipe.model.mcore_dir}: directory does not exist (convert a model "
                        "with sophia-convert hf-to-mcore, or fix model.mcore_dir)")
    if not Path(recipe.data.path).is_dir():
        problems.append(f"data.path {recipe.data.path}: directory does not exist (build a packed dataset with "
                        "sophia-rollout pack, or fix data.path)")
    if recipe.model.spec == "te":
        import importlib.util

        if importlib.util.find_spec("transformer_engine") is None:
            problems.append("model.spec=te needs Transformer Engine; on a CPU host use model.spec=local")
    if problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))


SECTIONS = ("model", "parallel", "train", "data", "checkpoint", "logging", "fp8")


def load_train_recipe(path: str | None, overrides: list[str]) -> TrainRecipe:
    raw = read_recipe(path, overrides)
    mine = {k: v for k, v in raw.items() if k in SECTIONS}
    if "model" not in mine or "data" not in mine:
        raise ConfigError(f"{path or 'overrides'}: a training recipe needs 'model' and 'data' sections")
    return build(TrainRecipe, mine)
