"""``sophia-convert``: InternVL (original or transformers-native) <-> Megatron-Core checkpoints.

    sophia-convert hf-to-mcore --hf-dir HF --out-dir OUT --tp T --pp P
    sophia-convert mcore-to-hf --mcore-dir OUT --out-dir HF2 [--format original|hf]
    sophia-convert verify --hf-dir HF --mcore-dir OUT [--tol 1e-4]
    sophia-convert inspect DIR
"""

from __future__ import annotations

import sys

from sophia_common.cli import dispatch

COMMANDS: dict[str, tuple[str, str]] = {}


def main(argv: list[str] | None = None) -> int:
    return dispatch("sophia-convert", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
