"""``sophia-train``: the SOPHIA off-policy update and the warm-up SFT on Megatron-Core.

    torchrun --nproc-per-node 2 -m sophia_megatron.cli --config configs/tiny.yaml [key=value ...]
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("sophia-train: the trainer is not built yet (see issue: InternVL in Megatron-Core)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
