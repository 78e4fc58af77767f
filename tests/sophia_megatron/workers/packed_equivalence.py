"""Worker: packed micro-batches against samples run one by one, and the reward weighting.

Single rank (TP=1). Loads a tiny converted InternVL and one pack of a packed dataset, then
checks and reports (JSON) three things with real Megatron code:
1. per-sample losses of the pack (block-diagonal causal attention) equal each sample run
   alone, and the gradient of the packed weighted loss equals the sum of the samples';
2. a sample of weight 0 contributes no gradient, and 3. gradients are linear in the weights --
   both through the trainer's own path: the pack's ``sample_weights`` are set, the loader builds
   the micro-batch, the trainer's forward step runs the model and its ``weighted_loss``, and the
   gradient is that of numerator / denominator (what Megatron applies), for both normalisations.
"""

from __future__ import annotations

import argparse
import json

import torch


def per_token_losses(model, mb, mask_fn):
    length = mb.tokens.shape[1]
    return model(mb.tokens, mb.position_ids, mask_fn(mb.cu_seqlens, length), labels=mb.labels,
                 pixel_values=mb.pixel_values).float()


def lm_grads(model):
    return torch.cat([p.grad.reshape(-1) for p in model.language_model.parameters() if p.grad is not None])


def weighted_sum_grad(model, mb, weights, mask_fn, scale=1.0):
    """Gradient of scale * sum_s w_s * (sum of sample s's token NLL)."""
    model.zero_grad(set_to_none=True)
    nll = per_token_losses(model, mb, mask_fn)
    sample = torch.repeat_interleave(torch.arange(len(mb.cu_seqlens) - 1), torch.diff(mb.cu_seqlens.long()))
    token_weight = (mb.loss_weight != 0).float().reshape(-1) * weights[sample]
    (scale * (nll.reshape(-1) * token_weight).sum()).backward()
    return lm_grads(model).clone()


def trainer_grad(model, pack, weights, normalization):
    """The gradient the trainer applies for ``pack`` with these sample weights (one micro-batch)."""
    from sophia_megatron.data import build_micro_batch
    from sophia_megatron.train.trainer import packed_forward_step

    mb = build_micro_batch({**pack, "sample_weights": [float(w) for w in weights]})
    model.zero_grad(set_to_none=True)
    output, loss_fn = packed_forward_step(iter([mb]), model, spec="local", device=torch.device("cpu"),
                                          normalization=normalization)
    numerator, denominator, _ = loss_fn(output)
    (numerator / denominator).backward()
    return lm_grads(model).clone()


def weighting_report(model, pack, normalization):
    n = len(pack["sample_ids"])
    weights = torch.rand(n, generator=torch.Generator().manual_seed(0)) + 0.5
    zero_first = weights.clone()
    zero_first[0] = 0.0
    first_only = torch.zeros(n)
    first_only[0] = weights[0]
    g_w = trainer_grad(model, pack, weights, normalization)
    g_2w = trainer_grad(model, pack, 2 * weights, normalization)
    g_zero = trainer_grad(model, pack, zero_first, normalization)
    g_first = trainer_grad(model, pack, first_only, normalization)
    return {"linearity_max_abs_diff": float((g_2w - 2 * g_w).abs().max()),
            "zero_weight_max_abs_diff": float((g_w - g_first - g_zero).abs().max()),
            "first_sample_grad_norm": float(g_first.norm()), "grad_scale": float(g_w.abs().max())}


def split_sample(pack, index):
    """The pack restricted to sample ``index`` (a pack of one)."""
    cu = pack["cu_seqlens"]
    lo, hi = cu[index], cu[index + 1]
    images_before = sum(1 for _ in _images_in(pack, 0, lo))
    n_images = sum(1 for _ in _images_in(pack, lo, hi))
    return {**pack, "input_ids": pack["input_ids"][lo:hi], "loss_mask": pack["loss_mask"][lo:hi],
            "position_ids": pack["position_ids"][lo:hi], "cu_seqlens": [0, hi - lo],
            "sample_weights": [pack["sample_weights"][index]], "sample_ids": [pack["sample_ids"][index]],
            "images": pack["images"][images_before:images_before + n_images],
            "image_tiles": pack["image_tiles"][images_before:images_before + n_images]}


def _images_in(pack, lo, hi):
    ids = pack["input_ids"][lo:hi]
    return [i for i in range(len(ids)) if ids[i] == IMG_START_ID]


IMG_START_ID = -1


def main() -> None:
    global IMG_START_ID
    parser = argparse.ArgumentParser()
    parser.add_argument("--mcore-dir", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    from sophia_common.tokenizer import load_tokenizer
    from sophia_megatron.checkpoint_io import load_into, read_arch
    from sophia_megatron.data import PackedDataset, build_micro_batch
    from sophia_megatron.model.internvl import InternVLModel, language_config
    from sophia_megatron.parallel import init_parallel
    from sophia_megatron.train.trainer import block_causal_mask

    init_parallel(1, 1)
    IMG_START_ID = load_tokenizer(f"{args.mcore_dir}/hf_files").token_to_id("<img>")
    arch, _ = read_arch(args.mcore_dir)
    model = InternVLModel(arch, language_config(arch, tp=1, pp=1), pre_process=True, post_process=True)
    load_into(model, args.mcore_dir, tp=1, pp=1, tp_rank=0, pp_rank=0)
    dataset = PackedDataset(args.data)
    pack = max((dataset.pack(i) for i in range(len(dataset))), key=lambda p: len(p["sample_ids"]))
    n = len(pack["sample_ids"])
    packed = build_micro_batch(pack)
    with torch.no_grad():
        nll = per_token_losses(model, packed, block_causal_mask).reshape(-1)
    mask = (packed.loss_weight != 0).float().reshape(-1)
    cu = packed.cu_seqlens.tolist()
    # Per-sample mean token NLL; gradients of the token-normalised objective (the trainer's).
    packed_losses = [float((nll[cu[i]:cu[i + 1]] * mask[cu[i]:cu[i + 1]]).sum() / mask[cu[i]:cu[i + 1]].sum())
                     for i in range(n)]
    scale = 1.0 / float(mask.sum())
    alone_losses, alone_grad = [], None
    ones = torch.ones(1)
    for i in range(n):
        single = build_micro_batch(split_sample(pack, i))
        with torch.no_grad():
            alone = per_token_losses(model, single, block_causal_mask).reshape(-1)
        single_mask = (single.loss_weight != 0).float().reshape(-1)
        alone_losses.append(float((alone * single_mask).sum() / single_mask.sum()))
        grad = weighted_sum_grad(model, single, ones, block_causal_mask, scale)
        alone_grad = grad if alone_grad is None else alone_grad + grad
    packed_grad = weighted_sum_grad(model, packed, torch.ones(n), block_causal_mask, scale)
    report = {
        "samples": n, "packed_losses": packed_losses, "alone_losses": alone_losses,
        "loss_max_abs_diff": max(abs(a - b) for a, b in zip(packed_losses, alone_losses)),
        "grad_max_abs_diff": float((packed_grad - alone_grad).abs().max()),
        "grad_scale": float(packed_grad.abs().max()),
        "weighting": {norm: weighting_report(model, pack, norm) for norm in ("token", "sample")},
    }
    with open(args.out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
