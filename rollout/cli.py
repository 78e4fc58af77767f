"""``sophia-rollout``: SOPHIA's off-policy data, stage by stage (DESIGN §1.1 steps 1-4).

    sophia-rollout {caption,reason,score,select,run,stats,merge,pack} --config RECIPE [key=value ...] [--shard i/n]
    sophia-rollout check --in FILE.jsonl
"""

from __future__ import annotations

import sys

from sophia_common.cli import dispatch

COMMANDS = {
    "check": ("rollout.verifier.cli:check_main", "verify {response, answer} JSONL lines, one JSON line each"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("sophia-rollout", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
