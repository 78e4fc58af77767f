"""``sophia-train``: the SOPHIA off-policy update and the warm-up SFT on Megatron-Core.

    torchrun --nproc-per-node 2 -m sophia_tools.train_cli --config configs/tiny.yaml [key=value ...]
    sophia-train --config configs/internvl3_38b.yaml --dry-run        # layout + memory check, no model

Modes: ``train.mode=sophia`` (reward weights from the packed dataset) or ``train.mode=sft``
(every weight 1, the warm-up). ``--export-hf DIR`` exports the final model through the
converter; ``--no-resume`` ignores checkpoints in ``checkpoint.save_dir``.
"""

from __future__ import annotations

import argparse
import json
import sys

from sophia_common.cli import run_guarded


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="sophia-train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="recipe YAML (configs/*.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="validate the parallel plan and estimate memory")
    parser.add_argument("--world-size", type=int, default=None, help="GPUs for --dry-run (default: recipe)")
    parser.add_argument("--export-hf", default=None, help="export the final model to this HF directory")
    parser.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints exist")
    return parser.parse_known_args(argv)


def train(args: argparse.Namespace, overrides: list[str]) -> int:
    from sophia_megatron.train.config import load_train_recipe

    if args.export_hf:
        overrides.append(f"checkpoint.export_hf={args.export_hf}")
    if args.no_resume:
        overrides.append("checkpoint.resume=false")
    recipe = load_train_recipe(args.config, overrides)
    if args.dry_run:
        from sophia_megatron.plan import dry_run

        report = dry_run(recipe, args.config, world_size=args.world_size)
        print(json.dumps(report, indent=2))
        return 0 if report["fits"] else 1
    from sophia_megatron.train.config import check_runtime
    from sophia_megatron.train.trainer import Trainer

    check_runtime(recipe)
    trainer = Trainer(recipe)
    trainer.run()
    from sophia_megatron.parallel import destroy_parallel

    destroy_parallel()
    return 0


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        print(f"error: unknown option {unknown[0]}", file=sys.stderr)
        return 2
    return run_guarded(lambda: train(args, overrides))


if __name__ == "__main__":
    sys.exit(main())
