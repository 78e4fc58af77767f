"""``sophia-profile train``: step time, tokens/s, TFLOP/s and MFU of the SOPHIA update.

Each configuration runs in its own process (``torch.distributed.run``, one rank per GPU, or
one CPU rank) with the real model code (``InternVLModel`` with the TE spec on GPU, the local
spec on CPU), the real engine (Megatron DDP, distributed AdamW, the pipeline schedule) and
the real weighted loss, on synthetic packs (random tokens, random image tiles) of a fixed
length. Weights are randomly initialised: speed does not depend on their values.

Presets:
- ``38b-reduced``: Qwen2.5-32B-shaped language layers (hidden 5120, 40/8 heads, FFN 27648,
  full 151,674 vocabulary) at reduced depth plus frozen InternViT-6B layers, bf16, 16K-token
  packs -- the GPU benchmark of the issue (BF16 vs each FP8 recipe);
- ``tiny``: the fixture shapes on CPU, so the whole path runs in CI.

    sophia-profile train --preset 38b-reduced --recipes bf16,delayed,tensorwise,blockwise --layers 4
    sophia-profile train --preset tiny --steps 4
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from conversion.arch import PRESETS, InternVLArch, LanguageArch, VisionArch

TINY = InternVLArch(
    vision=VisionArch(64, 4, 256, 2, "layer_norm", 1e-6, True, False, 448, 14),
    language=LanguageArch("qwen2", 64, 4, 2, 160, 4, 1125, 1e6, 1e-6, True, 4096),
    downsample_ratio=0.5, projector_act="gelu", image_token_id=1118)


def preset_arch(preset: str, layers: int, vit_layers: int) -> InternVLArch:
    if preset == "tiny":
        return TINY
    base = PRESETS["internvl3_38b"]
    return dataclasses.replace(base, language=dataclasses.replace(base.language, num_layers=layers),
                               vision=dataclasses.replace(base.vision, num_layers=vit_layers))


def synthetic_pack(arch: InternVLArch, seq: int, samples: int, tiles: int, seed: int) -> dict[str, Any]:
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.full(samples, seq // samples)
    lengths[-1] += seq - lengths.sum()
    ids = rng.integers(0, arch.language.vocab_size - 16, seq).astype(np.int64)
    ids[ids == arch.image_token_id] = 0
    ids[1:1 + tiles * arch.tokens_per_tile] = arch.image_token_id
    cu = np.concatenate([[0], np.cumsum(lengths)])
    return {"input_ids": ids.tolist(), "loss_mask": [1] * seq,
            "position_ids": np.concatenate([np.arange(n) for n in lengths]).tolist(),
            "cu_seqlens": cu.tolist(), "sample_weights": [1.0] * samples,
            "sample_ids": [f"s{i}" for i in range(samples)], "images": [], "image_tiles": []}


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from sophia_megatron import engine
    from sophia_megatron.data import build_micro_batch
    from sophia_megatron.parallel import init_parallel
    from sophia_megatron.train.metrics import device_peak_tflops, lm_flops, vision_flops
    from sophia_megatron.train.trainer import packed_forward_step

    ps = init_parallel(args.tp, 1, seed=0)
    gpu = torch.cuda.is_available()
    arch = preset_arch(args.preset, args.layers, args.vit_layers)
    dtype_name = "bfloat16" if gpu else "float32"
    dtype = engine.torch_dtype(dtype_name)
    config = engine.model_config(arch, tp=args.tp, pp=1, params_dtype=dtype_name,
                                 sequence_parallel=gpu and args.tp > 1, fp8_recipe=args.recipe)
    model = engine.build_model(arch, config, ps, spec="te" if gpu else "local", vision_dtype=dtype_name)
    ddp, optimizer = engine.build_training(model, config, engine.OptimizerSettings(
        lr=1e-5, weight_decay=0.0, clip_grad=1.0, bf16=gpu))
    pack = synthetic_pack(arch, args.seq, args.samples, args.tiles, seed=ps.dp_rank)
    mb = build_micro_batch(pack, pad_to=16, load_pixels=False)
    mb.pixel_values = torch.randn(args.tiles, 3, 448, 448, dtype=dtype) if args.tiles else None
    forward_step = functools.partial(packed_forward_step, spec="te" if gpu else "local",
                                     device=torch.device(ps.device), normalization="token")
    flops = lm_flops(arch, torch.diff(mb.cu_seqlens).tolist(), mb.tokens.shape[1],
                     model.language_model.vocab_size) + vision_flops(arch, args.tiles)
    times = []
    for _ in range(args.warmup + args.steps):
        if gpu:
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad()
        engine.forward_backward(forward_step, iter([mb]), [ddp], num_microbatches=1,
                                seq_length=mb.tokens.shape[1], micro_batch_size=1)
        engine.optimizer_step(optimizer)
        if gpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    measured = sorted(times[args.warmup:])
    step = measured[len(measured) // 2]
    peak = device_peak_tflops(fp8=args.recipe != "bf16")
    tflops = flops / step / 1e12 / args.tp
    return {"recipe": args.recipe, "dtype": str(dtype).replace("torch.", ""),
            "device": torch.cuda.get_device_name() if gpu else "cpu",
            "tp": args.tp, "layers": arch.language.num_layers, "vit_layers": arch.vision.num_layers,
            "seq": args.seq, "tiles": args.tiles, "step_seconds_median": step, "step_seconds": times,
            "tokens_per_s": args.seq / step, "tflops_per_gpu": tflops,
            "mfu": tflops / peak if peak else None, "peak_tflops": peak}


def run_config(args: argparse.Namespace, recipe: str, out: Path, passthrough: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.tp}",
           "--master-port", str(29500 + os.getpid() % 1000), "-m", "sophia_tools.bench.train", "--worker",
           "--recipe", recipe, "--out", str(out), *passthrough]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        return {"recipe": recipe, "error": (proc.stdout + proc.stderr)[-1500:]}
    return json.loads(out.read_text())


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sophia-profile train", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("38b-reduced", "tiny"), default="tiny")
    parser.add_argument("--recipes", default="bf16", help="comma list of bf16, delayed, tensorwise, blockwise")
    parser.add_argument("--layers", type=int, default=4, help="language layers (38b-reduced)")
    parser.add_argument("--vit-layers", type=int, default=2, help="frozen ViT-6B layers (38b-reduced)")
    parser.add_argument("--seq", type=int, default=None, help="tokens per pack (16384 on GPU, 1024 on CPU)")
    parser.add_argument("--samples", type=int, default=4, help="samples per pack")
    parser.add_argument("--tiles", type=int, default=None, help="image tiles per pack (8 on GPU, 1 on CPU)")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--plot", default=None, help="PNG of step time per configuration")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--recipe", default="bf16", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gpu_default = args.preset == "38b-reduced"
    args.seq = args.seq or (16384 if gpu_default else 1024)
    args.tiles = args.tiles if args.tiles is not None else (8 if gpu_default else 1)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        result = worker(args)
        if int(os.environ.get("RANK", "0")) == 0:
            Path(args.out).write_text(json.dumps(result))
        return 0
    keep = ["--preset", args.preset, "--layers", str(args.layers), "--vit-layers", str(args.vit_layers),
            "--seq", str(args.seq), "--samples", str(args.samples), "--tiles", str(args.tiles),
            "--tp", str(args.tp), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_config(args, r, Path(tmp) / f"{r}.json", keep) for r in args.recipes.split(",")]
    report: dict[str, Any] = {"benchmark": "train", "preset": args.preset, "runs": results}
    base = next((r for r in results if r.get("recipe") == "bf16" and "error" not in r), None)
    if base:
        report["speedup_vs_bf16"] = {r["recipe"]: round(r["tokens_per_s"] / base["tokens_per_s"], 3)
                                     for r in results if "error" not in r}
    if args.plot:
        plot(results, args.plot)
    print(json.dumps({**report, "runs": [{k: v for k, v in r.items() if k != "step_seconds"} for r in results]}))
    return 0 if all("error" not in r for r in results) else 1


def plot(results: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in results:
        if "error" not in r:
            ax.plot([r["seq"] / t for t in r["step_seconds"]], marker="o", label=r["recipe"])
    ax.set_xlabel("step")
    ax.set_ylabel("tokens/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    sys.exit(main())
