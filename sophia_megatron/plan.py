"""``sophia-train --dry-run``: check a parallel layout and plan every pipeline stage, without a model.

Checks TP x PP x DP against the world size and the architecture (the same check conversion
and the model builder use), then plans each pipeline stage for one micro-batch (one pack of
``max_seq_len`` tokens holding up to ``pack.max_tiles_per_pack`` image tiles):

memory (bytes per GPU), in the terms Megatron uses:
- weights: the stage's language-model parameters / TP in the training dtype; the first stage
  adds the word embeddings and the frozen vision path (replicated over TP, vision dtype); the
  last adds the final norm and the output layer;
- gradients: fp32 DDP buffers (``grad_reduce_in_fp32``) for the trainable parameters;
- optimizer: fp32 master weights + Adam moments, 12 bytes per parameter, sharded over DP;
- activations: Korthikanti et al. (2022) with flash attention, ``34 * s * h`` bytes per layer
  (/ TP under sequence parallelism; ``2 * s * h`` with full recompute, plus one layer's ``34 * s * h``
  while it is recomputed); under 1F1B stage ``i`` of
  ``PP`` keeps ``PP - i`` micro-batches in flight; the last stage adds fp32 logits; the first
  adds the vision forward of the pack's tiles (run without autograd: one layer's activations at
  a time) and the image embeddings of its in-flight micro-batches.

compute (TFLOP per GPU per micro-batch, forward + backward, 2 FLOP per multiply-add):
- language layers: ``2 s P`` for the matmuls plus ``2 s^2 q`` causal attention, forward x 3
  (backward is twice the forward) plus the recomputed forward; split over TP;
- the output layer on the last stage; the frozen vision forward on the first (not split over
  TP: every TP rank runs the replicated tower).

The stage that holds the most sets the memory peak; the slowest stage sets the pipeline's pace.
``parallel.first_stage_layers: auto`` (and the ``proposed_split`` of every report) is the split
that minimises the slowest stage's compute among the splits that fit the device, ties broken by
the smaller memory peak. A layout that exceeds the device memory is reported (``fits: false``,
exit 1) before a job is submitted. These are planned figures, not measurements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conversion.arch import PRESETS, InternVLArch, padded_vocab_size
from conversion.megatron_layout import stage_sizes
from sophia_common.config import ConfigError

GIB = 1024**3
HEADROOM = 0.92  # share of device memory a plan may use (allocator fragmentation, NCCL buffers)


def _arch(recipe: Any) -> InternVLArch:
    meta = Path(recipe.model.mcore_dir) / "sophia_meta.json"
    if meta.is_file():
        import json

        return InternVLArch.from_dict(json.loads(meta.read_text())["arch"])
    if recipe.model.arch in PRESETS:
        return PRESETS[recipe.model.arch]
    raise ConfigError(f"--dry-run needs {meta} or model.arch set to one of {sorted(PRESETS)}")


def layout_problems(arch: InternVLArch, tp: int, pp: int, world: int, first: int | None = None,
                    last: int | None = None) -> list[str]:
    from conversion.convert import Layout, check_layout
    from sophia_common.cli import UserError

    problems = [] if world % (tp * pp) == 0 else [f"world size {world} is not divisible by TP*PP = {tp * pp}"]
    try:
        check_layout(arch, Layout(tp, pp, first_stage_layers=first, last_stage_layers=last))
    except UserError as exc:
        problems.extend(str(exc).split("; "))
    return problems


def lm_layer_params(arch: InternVLArch) -> int:
    lm = arch.language
    q, kv = lm.num_heads * lm.head_dim, lm.num_query_groups * lm.head_dim
    bias = (q + 2 * kv) if lm.qkv_bias else 0
    return lm.hidden_size * (q + 2 * kv) + bias + q * lm.hidden_size + 3 * lm.hidden_size * lm.ffn_hidden_size \
        + 2 * lm.hidden_size


def vision_layer_params(arch: InternVLArch) -> int:
    vt = arch.vision
    return 4 * vt.hidden_size ** 2 + 2 * vt.hidden_size * vt.ffn_hidden_size + 10 * vt.hidden_size


def projector_params(arch: InternVLArch) -> int:
    c_in = int(arch.vision.hidden_size / arch.downsample_ratio ** 2)
    return c_in * arch.language.hidden_size + arch.language.hidden_size ** 2 + 2 * c_in


def vision_params(arch: InternVLArch) -> int:
    vt = arch.vision
    return vt.num_layers * vision_layer_params(arch) + vt.num_positions * vt.hidden_size + projector_params(arch)


def vision_forward_flops(arch: InternVLArch, tiles: int) -> float:
    """The frozen tower + projector forward over ``tiles`` 448-pixel tiles (full attention per tile)."""
    vt, n = arch.vision, arch.vision.num_positions
    per_layer = 2 * n * vision_layer_params(arch) + 4 * n * n * vt.hidden_size
    return tiles * (vt.num_layers * per_layer + 2 * arch.tokens_per_tile * projector_params(arch))


def lm_layer_forward_flops(arch: InternVLArch, seq: int) -> float:
    """One language layer's forward over a pack of ``seq`` tokens (causal attention as one sequence)."""
    lm = arch.language
    return 2 * seq * lm_layer_params(arch) + 2 * seq * seq * lm.num_heads * lm.head_dim


def _tiles(recipe: Any, arch: InternVLArch, recipe_path: str | None) -> int:
    """Image tiles per pack: ``pack.max_tiles_per_pack`` of the recipe file, else a pack of images only."""
    if recipe_path:
        from sophia_common.config import read_recipe

        tiles = (read_recipe(recipe_path).get("pack") or {}).get("max_tiles_per_pack")
        if isinstance(tiles, int) and tiles > 0:
            return tiles
    return recipe.train.max_seq_len // arch.tokens_per_tile


def plan_stages(recipe: Any, arch: InternVLArch, tp: int, pp: int, dp: int, tiles: int,
                first: int | None = None, last: int | None = None) -> list[dict[str, Any]]:
    """Per stage: its layers, memory (GiB by part) and compute (TFLOP per micro-batch per GPU)."""
    lm, par = arch.language, recipe.parallel
    seq, hidden = recipe.train.max_seq_len, lm.hidden_size
    wbytes = 2 if recipe.model.params_dtype == "bfloat16" else 4
    vbytes = 2 if recipe.model.vision_dtype == "bfloat16" else 4
    vocab = padded_vocab_size(lm.vocab_size, tp)
    sp = tp if par.sequence_parallel else 1
    per_layer_act = (2 if par.recompute == "full" else 34) * seq * hidden / sp
    recompute_peak = 34 * seq * hidden / sp if par.recompute == "full" else 0  # one layer re-run at a time
    layer_fwd = lm_layer_forward_flops(arch, seq)
    recompute_fwd = {"full": layer_fwd, "selective": 2 * seq * seq * lm.num_heads * lm.head_dim}.get(par.recompute, 0)
    plans = []
    for stage, layers in enumerate(stage_sizes(lm.num_layers, pp, first, last)):
        is_first, is_last = stage == 0, stage == pp - 1
        params = layers * lm_layer_params(arch) / tp + (vocab * hidden / tp if is_first else 0) \
            + (vocab * hidden / tp + hidden if is_last else 0)
        in_flight = pp - stage
        act = per_layer_act * layers * in_flight + recompute_peak + (4 * seq * vocab / tp if is_last else 0)
        vision_weights = vision_params(arch) * vbytes if is_first else 0
        vt = arch.vision
        vision_act = (tiles * vt.num_positions * (2 * vt.hidden_size + vt.ffn_hidden_size) * vbytes
                      + tiles * arch.tokens_per_tile * hidden * wbytes * in_flight) if is_first else 0
        parts = {"weights": params * wbytes + vision_weights, "gradients": params * 4,
                 "optimizer": params * 12 / dp, "activations": act + vision_act}
        memory = {k: round(v / GIB, 2) for k, v in parts.items()}
        memory["total"] = round(sum(parts.values()) / GIB, 2)
        flops = layers * (3 * layer_fwd + recompute_fwd) / tp
        flops += 3 * 2 * seq * vocab * hidden / tp if is_last else 0
        flops += vision_forward_flops(arch, tiles) if is_first else 0
        plans.append({"stage": stage, "layers": layers, "memory_gib": memory, "tflop": round(flops / 1e12, 1)})
    return plans


def _spread(plans: list[dict[str, Any]]) -> dict[str, float]:
    memory = [p["memory_gib"]["total"] for p in plans]
    compute = [p["tflop"] for p in plans]
    return {"memory_max_over_min": round(max(memory) / min(memory), 3),
            "compute_max_over_min": round(max(compute) / min(compute), 3)}


def candidate_splits(num_layers: int, pp: int) -> list[tuple[int | None, int | None]]:
    """Every (first, last) stage layer count Megatron accepts, the even split as (None, None)."""
    if pp == 1:
        return [(None, None)]
    out: list[tuple[int | None, int | None]] = [(None, None)]
    for first in range(1, num_layers):
        for last in range(1, num_layers - first + 1):
            try:
                stage_sizes(num_layers, pp, first, last)
            except ValueError:
                continue
            out.append((first, last))
    return out


def propose_split(recipe: Any, arch: InternVLArch, tp: int, pp: int, dp: int, tiles: int,
                  device_gib: float) -> tuple[int | None, int | None]:
    """The split with the fastest slowest stage among those that fit (ties: the lower memory peak)."""
    def cost(split: tuple[int | None, int | None]) -> tuple[bool, float, float]:
        plans = plan_stages(recipe, arch, tp, pp, dp, tiles, *split)
        peak = max(p["memory_gib"]["total"] for p in plans)
        return peak > device_gib * HEADROOM, max(p["tflop"] for p in plans), peak

    best = min(candidate_splits(arch.language.num_layers, pp), key=cost)
    return (None, None) if list(stage_sizes(arch.language.num_layers, pp, *best)) == \
        stage_sizes(arch.language.num_layers, pp) else best


def resolve_split(recipe: Any, arch: InternVLArch, dp: int = 1, device_gib: float = 80.0,
                  recipe_path: str | None = None) -> tuple[int | None, int | None]:
    """The (first, last) stage layer counts to plan: the recipe's, or the proposal for ``auto``."""
    par = recipe.parallel
    if par.pp == 1:
        return None, None
    if par.first_stage_layers != "auto":
        return par.first_stage_layers, par.last_stage_layers
    return propose_split(recipe, arch, par.tp, par.pp, dp, _tiles(recipe, arch, recipe_path), device_gib)


def training_split(recipe: Any) -> tuple[int | None, int | None]:
    """The (first, last) stage layer counts a training run uses; ``auto`` must be settled first.

    A run takes explicit numbers so that the recipe, the converted checkpoint (``sophia-convert
    hf-to-mcore --first-stage-layers F --last-stage-layers L``) and the saved checkpoints agree.
    """
    par = recipe.parallel
    if par.first_stage_layers == "auto" and par.pp > 1:
        raise ConfigError("parallel.first_stage_layers=auto is a planning mode: run `sophia-train --config "
                          "RECIPE --dry-run`, then set parallel.first_stage_layers / last_stage_layers to its "
                          "proposed_split (and convert with the same --first-stage-layers / --last-stage-layers)")
    return (par.first_stage_layers, par.last_stage_layers) if par.pp > 1 else (None, None)


def dry_run(recipe: Any, recipe_path: str | None, world_size: int | None = None,
            device_gib: float = 80.0) -> dict[str, Any]:
    arch = _arch(recipe)
    par = recipe.parallel
    tp, pp = par.tp, par.pp
    world = world_size or par.world_size or tp * pp
    dp = world // (tp * pp) if world % (tp * pp) == 0 else None
    first, last = resolve_split(recipe, arch, dp or 1, device_gib, recipe_path)
    problems = layout_problems(arch, tp, pp, world, first, last)
    report: dict[str, Any] = {"recipe": recipe_path, "family": arch.family, "world_size": world, "tp": tp,
                              "pp": pp, "dp": dp, "first_stage_layers": first, "last_stage_layers": last,
                              "sequence_parallel": par.sequence_parallel, "recompute": par.recompute,
                              "max_seq_len": recipe.train.max_seq_len, "fp8": recipe.fp8.recipe,
                              "figures": "planned (an analytic model), not measured", "problems": problems}
    if not problems:
        tiles = _tiles(recipe, arch, recipe_path)
        stages = plan_stages(recipe, arch, tp, pp, dp, tiles, first, last)
        peak = max(s["memory_gib"]["total"] for s in stages)
        report.update(tiles_per_pack=tiles, stages=stages, **_spread(stages),
                      memory_gib_per_gpu={"first": stages[0]["memory_gib"], "last": stages[-1]["memory_gib"]},
                      peak_gib=peak, device_gib=device_gib)
        proposed = propose_split(recipe, arch, tp, pp, dp, tiles, device_gib)
        report["proposed_split"] = {"first_stage_layers": proposed[0], "last_stage_layers": proposed[1],
                                    **_spread(plan_stages(recipe, arch, tp, pp, dp, tiles, *proposed))}
        if peak > device_gib * HEADROOM:
            problems.append(f"estimated {peak:.1f} GiB per GPU exceeds {device_gib:.0f} GiB (with 8% headroom)")
    report["fits"] = not problems
    return report
