"""``sophia-convert verify``: the Megatron model from a converted checkpoint vs. transformers.

Builds the transformers reference (``InternVLForConditionalGeneration``; an original-format
checkpoint is compared through the transformers-native model it maps to) and our Megatron
InternVL from ``--mcore-dir``, feeds both the same random image + text input, and prints
``max_abs_diff=<float>``; exits 1 above ``--tol``. It runs in one process (TP=1, PP=1, any
checkpoint layout is re-cut on load) or under ``torchrun`` with ``--tp/--pp`` (the logits are
compared on the last pipeline stage), which is how the multi-rank parity test runs it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch


def reference_model(hf_dir: str) -> tuple[Any, Any]:
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from conversion.hf_checkpoint import HFCheckpoint
    from conversion.hf_formats import to_prefixed_hf_name

    ckpt = HFCheckpoint(hf_dir)
    config = InternVLConfig.from_dict(ckpt.hf_config)
    config.tie_word_embeddings = False
    model = InternVLForConditionalGeneration(config).eval()
    state = {to_prefixed_hf_name(name): ckpt.get(name).float() for name in ckpt.names()}
    model.load_state_dict(state, strict=True)
    return model, ckpt.arch


def sample_inputs(arch: Any, seed: int, text_tokens: int = 48, tiles: int = 2) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    n_image = arch.tokens_per_tile * tiles
    vocab = arch.language.vocab_size
    ids = torch.randint(0, vocab, (1, text_tokens + n_image), generator=gen)
    ids[ids == arch.image_token_id] = 0
    ids[0, 8:8 + n_image] = arch.image_token_id
    size = arch.vision.image_size
    pixels = torch.randn(tiles, 3, size, size, generator=gen)
    return ids, pixels


def megatron_logits(mcore_dir: str, tp: int, pp: int, ids: torch.Tensor, pixels: torch.Tensor) -> Any:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from sophia_megatron import engine
    from sophia_megatron.checkpoint_io import read_arch
    from sophia_megatron.parallel import init_parallel

    pstate = init_parallel(tp=tp, pp=pp)
    arch, meta = read_arch(mcore_dir)
    config = engine.model_config(arch, tp=tp, pp=pp, gpu=False, training=False)
    model = engine.build_model(arch, config, pstate, spec=meta.get("spec", "local"), mcore_dir=mcore_dir)
    model.eval()
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    captured: list[torch.Tensor] = []

    def forward_step(data_iterator: Any, chunk: Any) -> Any:
        next(data_iterator)
        logits = chunk(ids.to(pstate.device), positions.to(pstate.device), None,
                       pixel_values=pixels.to(pstate.device))

        def keep(output: torch.Tensor) -> Any:
            captured.append(gather_vocab(output))
            return output.sum() * 0, {}

        return logits, keep

    with torch.no_grad():
        get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([None]), model=model,
                                    num_microbatches=1, seq_length=ids.shape[1], micro_batch_size=1,
                                    forward_only=True)
    return pstate, (captured[0][..., :arch.language.vocab_size] if captured else None)


def gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    return gather_from_tensor_model_parallel_region(logits)  # GPTModel returns [b, s, vocab / TP]


def check_pair(hf_dir: str, mcore_dir: str) -> None:
    """Refuse, in one line, a --mcore-dir that is not a converted checkpoint of the --hf-dir model."""
    from conversion.arch import InternVLArch
    from conversion.hf_checkpoint import HFCheckpoint
    from sophia_common.cli import UserError
    from sophia_common.mcore_checkpoint import TRAINING, CheckpointError, meta_kind, read_meta

    try:
        meta = read_meta(mcore_dir)
    except CheckpointError as exc:
        raise UserError(f"--mcore-dir: {exc}") from exc
    if meta_kind(meta) == TRAINING:
        raise UserError(f"--mcore-dir {mcore_dir} is a training run's checkpoint.save_dir, not a converted "
                        f"checkpoint; export it first (sophia-convert mcore-to-hf --mcore-dir {mcore_dir} "
                        f"--out-dir DIR) and compare DIR, or verify the checkpoint it started from, "
                        f"{meta.get('mcore_dir')}")
    mine = _flat(InternVLArch.from_dict(meta["arch"]).to_dict())
    theirs = _flat(HFCheckpoint(hf_dir).arch.to_dict())
    differ = [f"{key} {theirs.get(key)!r} vs {mine.get(key)!r}" for key in sorted(set(mine) | set(theirs))
              if mine.get(key) != theirs.get(key)]
    if differ:
        raise UserError(f"--hf-dir {hf_dir} and --mcore-dir {mcore_dir} are different models (hf vs mcore: "
                        f"{'; '.join(differ[:6])}{'; ...' if len(differ) > 6 else ''}); convert the HF "
                        f"checkpoint with sophia-convert hf-to-mcore and verify that pair")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sophia-convert verify", description=__doc__.splitlines()[0])
    parser.add_argument("--hf-dir", required=True, metavar="DIR",
                        help="the Hugging Face checkpoint the reference logits come from (required)")
    parser.add_argument("--mcore-dir", required=True, metavar="DIR",
                        help="the converted Megatron checkpoint to check against it (required)")
    parser.add_argument("--tol", type=float, default=1e-4,
                        help="largest allowed absolute logit difference; above it the exit code is 1 "
                             "(default: %(default)g)")
    parser.add_argument("--tp", type=int, default=1,
                        help="tensor-parallel size to run the Megatron model at, under torchrun with "
                             "TP x PP ranks (default: %(default)s)")
    parser.add_argument("--pp", type=int, default=1,
                        help="pipeline-parallel size to run the Megatron model at (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random image and token ids fed to both models (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    check_pair(args.hf_dir, args.mcore_dir)
    reference, arch = reference_model(args.hf_dir)
    ids, pixels = sample_inputs(arch, args.seed)
    pstate, logits = megatron_logits(args.mcore_dir, args.tp, args.pp, ids, pixels)
    if logits is None or pstate.tp_rank != 0 or pstate.dp_rank != 0:
        return 0
    expected = reference(input_ids=ids, pixel_values=pixels).logits
    if logits.shape != expected.shape:
        print(f"error: logits shape {tuple(logits.shape)} != reference {tuple(expected.shape)}", file=sys.stderr)
        return 1
    diff = float((logits.float() - expected.float()).abs().max())
    print(f"max_abs_diff={diff:.3e}", flush=True)
    if diff > args.tol:
        print(f"error: max_abs_diff {diff:.3e} above tolerance {args.tol:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
