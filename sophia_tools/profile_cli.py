"""``sophia-profile``: measured benchmarks that print JSON (see docs/BENCHMARKS.md).

Each benchmark lives in ``sophia_tools/bench/`` and is imported only when asked for.
"""

from __future__ import annotations

import sys

from sophia_common.cli import dispatch

COMMANDS = {
    "packing": ("sophia_tools.bench.packing:main", "pack a list of sample lengths; efficiency and speed"),
    "conversion": ("sophia_tools.bench.conversion:main", "convert a synthetic 38B-shaped checkpoint; GB/s vs copy, RSS"),
    "rollout": ("sophia_tools.bench.rollout:main", "reason-stage throughput vs bare LLM.generate; verifier speed"),
    "loader": ("sophia_tools.bench.loader:main", "training loader: bytes read per micro-batch vs packs used"),
    "train": ("sophia_tools.bench.train:main", "step time, tokens/s, TFLOP/s and MFU of the update"),
    "grpo": ("sophia_tools.bench.grpo:main", "GRPO step time split: generate / train / weight sync"),
    "verifier": ("sophia_tools.bench.verifier:main", "verifier accuracy, FP, FN, verdicts/s; --against math-verify"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("sophia-profile", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
