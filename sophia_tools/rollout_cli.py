"""``sophia-rollout``: SOPHIA's off-policy data, stage by stage (caption, reason, score, select; pack).

    sophia-rollout {caption,reason,score,select,run,stats,merge,pack} --config RECIPE [key=value ...] [--shard i/n]
    sophia-rollout check --in FILE.jsonl

``sophia-rollout COMMAND --help`` describes each command, its options and the key=value overrides.
"""

from __future__ import annotations

import sys

from sophia_common.cli import dispatch

COMMANDS = {
    "caption": ("rollout.pipeline:caption_main", "policy InternVL writes K captions per image (no question)"),
    "reason": ("rollout.pipeline:reason_main", "reasoning LLM writes N trajectories per caption"),
    "score": ("rollout.pipeline:score_main", "verify outcomes (Eq. 4) and caption rewards (Eq. 5)"),
    "select": ("rollout.pipeline:select_main", "keep the shortest correct trajectories (Eq. 6)"),
    "run": ("rollout.pipeline:run_main", "caption -> reason -> score -> select"),
    "stats": ("rollout.pipeline:stats_main", "counts, pass rates, length histograms, rejects"),
    "merge": ("rollout.pipeline:merge_main", "join the stores of array-job shards, checked"),
    "pack": ("rollout.pack.build:pack_main", "tokenise and pack samples into a length-sorted dataset"),
    "filter": ("rollout.question_filter:filter_main", "keep GRPO questions the policy solves 40-60 % of the time"),
    "check": ("rollout.verifier.check:check_main", "verify {response, answer} JSONL lines, one JSON line each"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("sophia-rollout", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
