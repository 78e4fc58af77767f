"""``sophia-convert``: InternVL (original or transformers-native) <-> Megatron-Core checkpoints.

    sophia-convert hf-to-mcore --hf-dir HF --out-dir OUT --tp T --pp P [--first-stage-layers N]
                               [--last-stage-layers N] [--vision-tp auto|1] [--spec local|te]
    sophia-convert mcore-to-hf --mcore-dir OUT|SAVE_DIR --out-dir HF2 [--format original|hf]
    sophia-convert verify --hf-dir HF --mcore-dir OUT [--tol 1e-4]     (torchrun ... --tp T --pp P also works)
    sophia-convert inspect DIR

Format (original remote-code or transformers-native) and family are detected from config.json.
Outputs are written under a temporary name and renamed when complete; an existing output
directory is refused unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys

from sophia_common.cli import dispatch


def hf_to_mcore_main(argv: list[str]) -> int:
    from conversion.convert import hf_to_mcore

    parser = argparse.ArgumentParser(
        prog="sophia-convert hf-to-mcore",
        description="Convert an InternVL checkpoint in Hugging Face safetensors (original remote-code or "
                    "transformers-native format, detected from config.json) into the Megatron-Core "
                    "TP/PP layout that sophia-train loads. Streamed: memory stays at a few tensors.")
    parser.add_argument("--hf-dir", required=True, metavar="DIR",
                        help="the Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer) (required)")
    parser.add_argument("--out-dir", required=True, metavar="DIR",
                        help="the Megatron checkpoint to write (built as DIR.tmp-<pid>, renamed when complete) (required)")
    parser.add_argument("--tp", type=int, default=1,
                        help="tensor-parallel size; must divide the attention heads and the query groups "
                             "(default: %(default)s)")
    parser.add_argument("--pp", type=int, default=1,
                        help="pipeline-parallel size: language layers are split over PP stages (default: "
                             "%(default)s)")
    parser.add_argument("--first-stage-layers", type=int, default=None, metavar="N",
                        help="language layers on the first pipeline stage, which also holds the vision "
                             "tower (default: an even split)")
    parser.add_argument("--last-stage-layers", type=int, default=None, metavar="N",
                        help="language layers on the last pipeline stage, which also holds the output "
                             "layer (default: an even split); middle stages share the rest evenly")
    parser.add_argument("--vision-tp", choices=("auto", "1"), default="auto",
                        help="tensor parallelism of the frozen vision path; it is kept replicated, so "
                             "'auto' means 1 (default: %(default)s)")
    parser.add_argument("--spec", choices=("local", "te"), default="local",
                        help="layer spec of the trainer that will load it: 'te' (Transformer Engine, GPU; "
                             "norms fused into the linear layers) or 'local' (CPU) (default: %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing output directory (default: refuse)")
    args = parser.parse_args(argv)
    result = hf_to_mcore(args.hf_dir, args.out_dir, tp=args.tp, pp=args.pp, spec=args.spec, force=args.force,
                         first_stage_layers=args.first_stage_layers, last_stage_layers=args.last_stage_layers)
    print(json.dumps(result))
    return 0


def mcore_to_hf_main(argv: list[str]) -> int:
    from conversion.dir_kind import directory_kind
    from conversion.export import mcore_to_hf

    parser = argparse.ArgumentParser(
        prog="sophia-convert mcore-to-hf",
        description="Export a Megatron checkpoint (converted by hf-to-mcore, or a sophia-train "
                    "checkpoint.save_dir) to a Hugging Face InternVL checkpoint.")
    parser.add_argument("--mcore-dir", required=True, metavar="DIR",
                        help="a converted checkpoint or a training checkpoint.save_dir (latest step) (required)")
    parser.add_argument("--out-dir", required=True, metavar="DIR",
                        help="the Hugging Face checkpoint to write (built as DIR.tmp-<pid>, renamed when complete) (required)")
    parser.add_argument("--format", choices=("original", "hf"), default=None,
                        help="output format: 'original' (remote-code InternVLChatModel) or 'hf' "
                             "(transformers-native) (default: the format the checkpoint was converted from)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing output directory (default: refuse)")
    args = parser.parse_args(argv)
    if directory_kind(args.mcore_dir) == "training":
        # A trainer's distributed checkpoint: Megatron loads (and reshards) it, then the same export.
        from sophia_megatron.export_dist import export_training_checkpoint as export

        print(json.dumps(export(args.mcore_dir, args.out_dir, fmt=args.format, force=args.force)))
        return 0
    print(json.dumps(mcore_to_hf(args.mcore_dir, args.out_dir, fmt=args.format, force=args.force)))
    return 0


def inspect_main(argv: list[str]) -> int:
    from conversion.describe import inspect_dir

    parser = argparse.ArgumentParser(prog="sophia-convert inspect")
    parser.add_argument("dir")
    args = parser.parse_args(argv)
    for key, value in inspect_dir(args.dir).items():
        print(f"{key:<18} {value}")
    return 0


COMMANDS = {
    "hf-to-mcore": ("sophia_tools.convert_cli:hf_to_mcore_main", "HF InternVL -> Megatron TP/PP checkpoint (streamed)"),
    "mcore-to-hf": ("sophia_tools.convert_cli:mcore_to_hf_main", "Megatron checkpoint -> HF InternVL (either format)"),
    "verify": ("sophia_megatron.verify:main", "Megatron model vs transformers logits; max_abs_diff"),
    "inspect": ("sophia_tools.convert_cli:inspect_main", "format, family, layout, parameters, dtype, bytes"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("sophia-convert", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
