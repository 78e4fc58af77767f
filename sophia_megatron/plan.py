"""``sophia-train --dry-run``: check a parallel layout and estimate per-GPU memory, without a model.

Checks TP x PP x DP against the world size, the attention heads, query groups, layers and
the padded vocabulary, then estimates the bytes each GPU holds (the first and the last
pipeline stage, whichever is larger), in the terms Megatron uses:

- weights: language-model parameters of the stage / TP, in the training dtype, plus the
  frozen vision path (replicated, first stage);
- gradients: fp32 DDP buffers (``grad_reduce_in_fp32``) for the trainable parameters;
- optimizer: fp32 master weights + Adam moments, 12 bytes per parameter, sharded over DP by
  the distributed optimizer;
- activations: Korthikanti et al. (2022) with flash attention, ``34 * s * h`` bytes per layer
  (divided by TP under sequence parallelism), ``2 * s * h`` per layer with full recompute;
  1F1B keeps up to PP micro-batches in flight on the first stage; plus fp32 logits on the
  last stage and the vision activations of the pack's tiles.
A layout that exceeds the device memory is reported (``fits: false``, exit 1) before a job is
submitted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conversion.arch import PRESETS, InternVLArch, padded_vocab_size
from sophia_common.config import ConfigError

GIB = 1024**3


def _arch(recipe: Any) -> InternVLArch:
    meta = Path(recipe.model.mcore_dir) / "sophia_meta.json"
    if meta.is_file():
        import json

        return InternVLArch.from_dict(json.loads(meta.read_text())["arch"])
    if recipe.model.arch in PRESETS:
        return PRESETS[recipe.model.arch]
    raise ConfigError(f"--dry-run needs {meta} or model.arch set to one of {sorted(PRESETS)}")


def layout_problems(arch: InternVLArch, tp: int, pp: int, world: int) -> list[str]:
    lm, problems = arch.language, []
    if world % (tp * pp):
        problems.append(f"world size {world} is not divisible by TP*PP = {tp * pp}")
    if lm.num_heads % tp:
        problems.append(f"TP={tp} does not divide {lm.num_heads} attention heads")
    if lm.num_query_groups % tp:
        problems.append(f"TP={tp} does not divide {lm.num_query_groups} query groups")
    if lm.num_layers % pp:
        problems.append(f"PP={pp} does not divide {lm.num_layers} layers")
    return problems


def lm_layer_params(arch: InternVLArch) -> int:
    lm = arch.language
    q, kv = lm.num_heads * lm.head_dim, lm.num_query_groups * lm.head_dim
    bias = (q + 2 * kv) if lm.qkv_bias else 0
    return lm.hidden_size * (q + 2 * kv) + bias + q * lm.hidden_size + 3 * lm.hidden_size * lm.ffn_hidden_size \
        + 2 * lm.hidden_size


def vision_params(arch: InternVLArch) -> int:
    vt = arch.vision
    per_layer = 4 * vt.hidden_size ** 2 + 2 * vt.hidden_size * vt.ffn_hidden_size + 10 * vt.hidden_size
    c_in = int(vt.hidden_size / arch.downsample_ratio ** 2)
    projector = c_in * arch.language.hidden_size + arch.language.hidden_size ** 2 + 2 * c_in
    return vt.num_layers * per_layer + vt.num_positions * vt.hidden_size + projector


def estimate(recipe: Any, arch: InternVLArch, tp: int, pp: int, dp: int) -> dict[str, Any]:
    lm = arch.language
    seq, hidden, sp = recipe.train.max_seq_len, lm.hidden_size, recipe.parallel.sequence_parallel
    wbytes = 2 if recipe.model.params_dtype == "bfloat16" else 4
    vocab = padded_vocab_size(lm.vocab_size, tp)
    layers = lm.num_layers // pp
    stages = {}
    for stage in ("first", "last"):
        params = layers * lm_layer_params(arch) / tp + vocab * hidden / tp + (hidden if stage == "last" else 0)
        per_layer_act = (2 if recipe.parallel.recompute == "full" else 34) * seq * hidden / (tp if sp else 1)
        in_flight = pp if stage == "first" else 1
        act = per_layer_act * layers * in_flight + (4 * seq * vocab / tp if stage == "last" else 0)
        vision = vision_params(arch) * 2 if stage == "first" else 0
        tiles = seq // arch.tokens_per_tile
        vision_act = 4 * tiles * arch.vision.num_positions * arch.vision.hidden_size if stage == "first" else 0
        parts = {"weights": params * wbytes + vision, "gradients": params * 4,
                 "optimizer": params * 12 / dp, "activations": act + vision_act}
        stages[stage] = {k: round(v / GIB, 2) for k, v in parts.items()}
        stages[stage]["total"] = round(sum(parts.values()) / GIB, 2)
    return stages


def dry_run(recipe: Any, recipe_path: str | None, world_size: int | None = None,
            device_gib: float = 80.0) -> dict[str, Any]:
    arch = _arch(recipe)
    tp, pp = recipe.parallel.tp, recipe.parallel.pp
    world = world_size or recipe.parallel.world_size or tp * pp
    problems = layout_problems(arch, tp, pp, world)
    report: dict[str, Any] = {"recipe": recipe_path, "family": arch.family, "world_size": world, "tp": tp,
                              "pp": pp, "dp": world // (tp * pp) if world % (tp * pp) == 0 else None,
                              "sequence_parallel": recipe.parallel.sequence_parallel,
                              "recompute": recipe.parallel.recompute, "max_seq_len": recipe.train.max_seq_len,
                              "fp8": recipe.fp8.recipe, "problems": problems}
    if not problems:
        stages = estimate(recipe, arch, tp, pp, report["dp"])
        peak = max(s["total"] for s in stages.values())
        report.update(memory_gib_per_gpu=stages, peak_gib=peak, device_gib=device_gib,
                      fits=peak <= device_gib * 0.92)
        if not report["fits"]:
            problems.append(f"estimated {peak:.1f} GiB per GPU exceeds {device_gib:.0f} GiB (with 8% headroom)")
    report["fits"] = not problems
    return report
