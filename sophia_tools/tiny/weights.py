"""Seeded random weights for the tiny models: values that exercise every code path (no ones/zeros)."""

from __future__ import annotations


def randomize_parameters_(model, seed: int) -> None:
    """Fill every parameter with seeded, non-trivial random values (in sorted-name order).

    Matrices get N(0, 1/fan_in); norm weights 1 + N(0, 0.1); layer scales 0.1 * (1 + N(0, 0.2));
    biases and embeddings of the vision tower N(0, 0.05) — never the ones/zeros of a fresh init.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            param = params[name]
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith(("lambda_1", "lambda_2", "ls1", "ls2")):
                value = 0.1 * (1 + 0.2 * noise)
            elif param.dim() == 1 and "norm" in name and name.endswith("weight"):
                value = 1 + 0.1 * noise
            elif param.dim() <= 1 or leaf in ("cls_token", "position_embeddings"):
                value = 0.05 * noise
            else:
                value = noise / (param[0].numel() ** 0.5)
            param.copy_(value.to(param.dtype))
