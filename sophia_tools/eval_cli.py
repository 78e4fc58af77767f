"""``sophia-eval``: the paper's evaluation protocol (App. C) on the benchmarks' published files.

    sophia-eval run --config RECIPE --model HF_DIR --benchmarks NAME[:FORMAT]=PATH[,...] --out DIR [--samples K]
    sophia-eval compare DIR_A DIR_B [--out DIR]
    sophia-eval report DIR
    sophia-eval formats
"""

from __future__ import annotations

import sys

from sophia_common.cli import dispatch

COMMANDS = {
    "run": ("evaluation.cli:run_main", "evaluate a checkpoint on benchmark files (resumable)"),
    "compare": ("evaluation.cli:compare_main", "per-benchmark pass@1 deltas with paired bootstrap intervals"),
    "report": ("evaluation.cli:report_main", "rewrite results.* from the benchmark dirs (array merge)"),
    "formats": ("evaluation.cli:formats_main", "the benchmark formats and where to download them"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("sophia-eval", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
