"""``sophia-convert``: InternVL (original or transformers-native) <-> Megatron-Core checkpoints.

    sophia-convert hf-to-mcore --hf-dir HF --out-dir OUT --tp T --pp P [--vision-tp auto|1] [--spec local|te]
    sophia-convert mcore-to-hf --mcore-dir OUT|SAVE_DIR --out-dir HF2 [--format original|hf]
    sophia-convert verify --hf-dir HF --mcore-dir OUT [--tol 1e-4]     (torchrun ... --tp T --pp P also works)
    sophia-convert inspect DIR

Format (original remote-code or transformers-native) and family are detected from config.json.
Outputs are written under a temporary name and renamed when complete; an existing output
directory is refused unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from sophia_common.cli import dispatch


def hf_to_mcore_main(argv: list[str]) -> int:
    from conversion.convert import hf_to_mcore

    parser = argparse.ArgumentParser(prog="sophia-convert hf-to-mcore")
    parser.add_argument("--hf-dir", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--vision-tp", choices=("auto", "1"), default="auto",
                        help="the frozen vision path is kept replicated (TP=1); 'auto' means 1")
    parser.add_argument("--spec", choices=("local", "te"), default="local",
                        help="layer spec of the trainer: 'te' on GPU (fused norms), 'local' on CPU")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    result = hf_to_mcore(args.hf_dir, args.out_dir, tp=args.tp, pp=args.pp, spec=args.spec, force=args.force)
    print(json.dumps(result))
    return 0


def mcore_to_hf_main(argv: list[str]) -> int:
    from conversion.export import mcore_to_hf

    parser = argparse.ArgumentParser(prog="sophia-convert mcore-to-hf")
    parser.add_argument("--mcore-dir", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--format", choices=("original", "hf"), default=None,
                        help="output format (default: the format the checkpoint was converted from)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    args = parser.parse_args(argv)
    if is_training_checkpoint(args.mcore_dir):
        # A trainer's distributed checkpoint: Megatron loads (and reshards) it, then the same export.
        export = importlib.import_module("sophia_megatron.export_dist").export_training_checkpoint
        print(json.dumps(export(args.mcore_dir, args.out_dir, fmt=args.format, force=args.force)))
        return 0
    print(json.dumps(mcore_to_hf(args.mcore_dir, args.out_dir, fmt=args.format, force=args.force)))
    return 0


def is_training_checkpoint(directory: str) -> bool:
    """A trainer ``checkpoint.save_dir`` (its metadata points at the converted checkpoint it started from)."""
    meta = Path(directory) / "sophia_meta.json"
    return meta.is_file() and "mcore_dir" in json.loads(meta.read_text())


def inspect_main(argv: list[str]) -> int:
    from conversion.inspect import inspect_dir

    parser = argparse.ArgumentParser(prog="sophia-convert inspect")
    parser.add_argument("dir")
    args = parser.parse_args(argv)
    for key, value in inspect_dir(args.dir).items():
        print(f"{key:<18} {value}")
    return 0


COMMANDS = {
    "hf-to-mcore": ("conversion.cli:hf_to_mcore_main", "HF InternVL -> Megatron TP/PP checkpoint (streamed)"),
    "mcore-to-hf": ("conversion.cli:mcore_to_hf_main", "Megatron checkpoint -> HF InternVL (either format)"),
    "verify": ("sophia_megatron.verify:main", "Megatron model vs transformers logits; max_abs_diff"),
    "inspect": ("conversion.cli:inspect_main", "format, family, layout, parameters, dtype, bytes"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("sophia-convert", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
