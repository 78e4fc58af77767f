"""Honest throughput accounting: FLOPs, TFLOP/s per GPU and MFU, plus the metric sinks.

FLOPs per step count what the hardware really computes for the update:
- language model, forward + backward (x3 of forward): ``2 x params_matmul x tokens`` for every
  dense matmul (q, k, v, o, gate, up, down, LM head) plus causal attention inside each
  sample, ``2 x 2 x layers x hidden x (sum of squared sample lengths) / 2`` forward;
- frozen vision path, forward only (x1): tower matmuls and attention over 1,025 tokens per
  tile, and the projector.
Padding tokens are counted (they are computed). MFU = achieved FLOP/s ÷ the device's dense
peak (bf16, or fp8 when FP8 is on); on a CPU there is no meaningful peak and MFU is null.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conversion.arch import InternVLArch

DENSE_PEAK_TFLOPS = {  # per GPU, dense (no sparsity), from the vendors' datasheets
    "H100": {"bf16": 989.0, "fp8": 1979.0},
    "H200": {"bf16": 989.0, "fp8": 1979.0},
    "A100": {"bf16": 312.0, "fp8": None},
}


def lm_flops(arch: InternVLArch, sample_lengths: list[int], padded_tokens: int, vocab: int) -> float:
    lm = arch.language
    h, d = lm.hidden_size, lm.head_dim
    per_token = 2 * (h * (lm.num_heads * d) + 2 * h * (lm.num_query_groups * d) + (lm.num_heads * d) * h
                     + 3 * h * lm.ffn_hidden_size) * lm.num_layers + 2 * h * vocab
    attention = 2 * 2 * lm.num_layers * (lm.num_heads * d) * sum(n * n for n in sample_lengths) / 2
    return 3.0 * (per_token * padded_tokens + attention)


def vision_flops(arch: InternVLArch, tiles: int) -> float:
    vt = arch.vision
    seq = vt.num_positions
    c, f = vt.hidden_size, vt.ffn_hidden_size
    per_token = 2 * (4 * c * c + 2 * c * f) * vt.num_layers
    attention = 2 * 2 * vt.num_layers * c * seq * seq
    c_in = int(c / arch.downsample_ratio ** 2)
    projector = 2 * (c_in * arch.language.hidden_size + arch.language.hidden_size ** 2) * arch.tokens_per_tile
    return float(tiles * (per_token * seq + attention + projector))


def device_peak_tflops(fp8: bool) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key, peaks in DENSE_PEAK_TFLOPS.items():
        if key in name:
            return peaks["fp8" if fp8 else "bf16"]
    return None


class MetricSinks:
    """Console (rank 0), JSON lines, TensorBoard and optionally Weights & Biases."""

    def __init__(self, *, tensorboard_dir: str | None, wandb_project: str | None, metrics_file: str | None,
                 config: dict[str, Any]) -> None:
        self.tb = self.wandb = None
        self.metrics_file = Path(metrics_file) if metrics_file else None
        if self.metrics_file:
            self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(tensorboard_dir)
        if wandb_project:
            try:
                import wandb
            except ImportError as exc:
                raise RuntimeError("logging.wandb_project is set but wandb is not installed "
                                   "(pip install wandb, or set logging.wandb_project=null)") from exc
            self.wandb = wandb.init(project=wandb_project, config=config)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if self.metrics_file:
            with self.metrics_file.open("a") as f:
                f.write(json.dumps({"step": step, **metrics}) + "\n")
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v is not None}
        if self.tb:
            for key, value in numeric.items():
                self.tb.add_scalar(key, value, step)
            self.tb.flush()
        if self.wandb:
            self.wandb.log(numeric, step=step)

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()
