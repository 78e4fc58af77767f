"""Worker: does packed attention with the local spec honour the block mask under the GPU config?

Builds the tiny InternVL with the configuration a GPU run uses (``engine.model_config(gpu=True)``:
bf16, ``masked_softmax_fusion``) and the local layer spec, then lets Megatron-Core's own
``FusedScaleMaskSoftmax`` choose its path. The CUDA kernels cannot run here, so they are replaced
by MOCKS that compute what each kernel computes (``ScaledUpperTriangMaskedSoftmax``: causal,
ignores any mask; ``ScaledMaskedSoftmax``: applies the given mask) and record that they ran; the
kernels' batch-per-block query is mocked too. Reports (JSON) the config, the mask types, the kernel
chosen, the attention probability that leaks across samples, and the logits of a pack's second
sample against the same sample alone.
"""

from __future__ import annotations

import argparse
import json

import torch


def install_kernel_mocks(calls: list[str]) -> None:
    from megatron.core.fusions import fused_softmax as fs

    def upper_triang(inputs, scale):  # MOCK of scaled_upper_triang_masked_softmax_cuda
        calls.append("ScaledUpperTriangMaskedSoftmax")
        sq, sk = inputs.shape[-2:]
        causal = torch.ones(sq, sk, dtype=torch.bool).triu(1)
        return torch.softmax((inputs.float() * scale).masked_fill(causal, -10000.0), -1).to(inputs.dtype)

    def masked(inputs, mask, scale):  # MOCK of scaled_masked_softmax_cuda
        calls.append("ScaledMaskedSoftmax")
        return torch.softmax((inputs.float() * scale).masked_fill(mask, -10000.0), -1).to(inputs.dtype)

    fs.ScaledUpperTriangMaskedSoftmax.apply = staticmethod(upper_triang)
    fs.ScaledMaskedSoftmax.apply = staticmethod(masked)
    fs.FusedScaleMaskSoftmax.get_batch_per_block = staticmethod(lambda sq, sk, b, np: 4)  # MOCK


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from megatron.core.fusions.fused_softmax import FusedScaleMaskSoftmax

    from sophia_megatron import engine
    from sophia_megatron.parallel import init_parallel
    from sophia_megatron.train.trainer import block_causal_mask
    from sophia_tools.bench.train import TINY

    pstate = init_parallel(1, 1)
    config = engine.model_config(TINY, tp=1, pp=1, params_dtype="bfloat16", gpu=True)
    model = engine.build_model(TINY, config, pstate, spec="local").eval()
    softmaxes = [m for m in model.modules() if isinstance(m, FusedScaleMaskSoftmax)]
    calls: list[str] = []
    install_kernel_mocks(calls)

    heads, half = TINY.language.num_heads, 32
    cu = torch.tensor([0, half, 2 * half])
    mask = block_causal_mask(cu, 2 * half)
    scores = torch.randn(1, heads, 2 * half, 2 * half, generator=torch.Generator().manual_seed(0)).bfloat16()
    fused = softmaxes[0].is_kernel_available(mask, *scores.shape)
    probs = softmaxes[0](scores, mask)
    leak = float(probs[..., half:, :half].float().abs().max())

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, TINY.image_token_id - 1, (1, 2 * half), generator=gen)
    positions = torch.cat([torch.arange(half), torch.arange(half)]).unsqueeze(0)
    with torch.no_grad():
        packed = model(ids, positions, mask)[0, half:].float()
        alone = model(ids[:, half:], torch.arange(half).unsqueeze(0), None)[0].float()
    report = {"bf16": config.bf16, "masked_softmax_fusion": config.masked_softmax_fusion,
              "mask_types": sorted({m.attn_mask_type.name for m in softmaxes}), "layers": len(softmaxes),
              "fused_path_taken": bool(fused), "kernels": sorted(set(calls)), "cross_sample_probability": leak,
              "second_sample_logits_max_abs_diff": float((packed - alone).abs().max()),
              "logits_scale": float(alone.abs().max())}
    with open(args.out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
