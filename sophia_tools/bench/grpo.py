"""``sophia-profile grpo``: where a GRPO step's time goes — generate / train / weight sync.

    sophia-profile grpo --preset tiny [--steps 4] [--workdir DIR]

``tiny`` (CPU): the tiny InternVL fixture, briefly warmed up on the demo's circle task
(``sophia_tools.grpo.warmup``, so groups have pass rates strictly between 0 and 1 and every step
trains and syncs), then ``sophia-train train.mode=grpo`` on one rank for ``--steps`` steps (the
transformers generator in the same process, Megatron on gloo). Prints one JSON object: the
per-step split from the loop's own metrics, the mean of each part, and each part's share of the
step (the step time is the baseline every part is measured against, in the same run).
Setup (fixtures, warm-up, conversion) is not timed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PARTS = ("generate_seconds", "train_seconds", "sync_seconds")


def prepare(workdir: Path, warmup_steps: int) -> dict[str, Path]:
    import torch

    from conversion.convert import hf_to_mcore
    from sophia_tools.demo.task import write_task
    from sophia_tools.grpo.warmup import warm_up
    from sophia_tools.tiny import build_all

    paths = {"hf": workdir / "hf", "mcore": workdir / "mcore", "questions": workdir / "task" / "rollout_inputs.jsonl"}
    if all(p.exists() for p in paths.values()):  # a kept --workdir: reuse its warmed-up policy
        return paths
    tiny = build_all(workdir / "tiny")
    write_task(workdir / "task", images=16, warmup_images=0, reasoner_samples=0, mix_samples=0, caption_prompt="x",
               seed=5)
    torch.set_num_threads(1)
    warm_up(tiny["vit300m_qwen2_hf"], workdir / "task" / "rollout_inputs.jsonl", workdir / "hf", system=None,
            steps=warmup_steps, p_correct=0.4, lr=5e-3, batch_size=8)
    hf_to_mcore(workdir / "hf", workdir / "mcore", tp=1, pp=1, force=True)
    return paths


def recipe(workdir: Path, paths: dict[str, Path], steps: int) -> Path:
    import yaml

    out = workdir / "run"
    body = {"model": {"mcore_dir": str(paths["mcore"])}, "parallel": {"tp": 1, "pp": 1},
            "train": {"mode": "grpo", "max_seq_len": 4096, "min_lr_ratio": 1.0},
            "checkpoint": {"save_dir": None}, "logging": {"metrics_file": str(out / "metrics.jsonl")},
            "grpo": {"questions": str(paths["questions"]), "steps": steps, "lr": 5e-4, "questions_per_step": 4,
                     "rollouts_per_question": 4, "max_tokens": 12, "max_tiles": 1, "micro_batch_tokens": 700,
                     "save_rollouts": False,
                     "generator": {"model": str(paths["hf"]), "engine": "transformers", "dtype": "float32"}}}
    out.mkdir(parents=True, exist_ok=True)
    path = workdir / "grpo.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def summarise(history: list[dict[str, Any]]) -> dict[str, Any]:
    per_step = [{"step": h["step"], **{p: round(h[p], 4) for p in PARTS}, "step_seconds": round(h["step_seconds"], 4),
                 "rollouts_kept": h["rollouts_kept"], "mismatch": h["mismatch"]} for h in history]
    timed = history[1:] or history  # the first step also warms caches up
    mean = {p: sum(h[p] for h in timed) / len(timed) for p in (*PARTS, "step_seconds")}
    return {"steps": per_step, "mean_over_steps_after_the_first": {k: round(v, 4) for k, v in mean.items()},
            "share_of_step": {p: round(mean[p] / mean["step_seconds"], 4) for p in PARTS}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sophia-profile grpo", description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("tiny",), default="tiny")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup-steps", type=int, default=40, help="SFT steps of the tiny policy (not timed)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the fixtures here and reuse them next time (default: a temp dir)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        path = recipe(workdir, prepare(workdir, args.warmup_steps), args.steps)
        proc = subprocess.run([sys.executable, "-m", "sophia_tools.train_cli", "--config", str(path)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        lines = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
        report = {"preset": args.preset, "machine": "cpu", **summarise([h for h in lines if "loss" in h])}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
