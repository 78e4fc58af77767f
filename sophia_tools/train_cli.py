"""``sophia-train``: the SOPHIA off-policy update and the warm-up SFT on Megatron-Core.

    sophia-train --config configs/tiny.yaml train.steps=5 parallel.pp=2     # starts its own 2 ranks
    sophia-train --config configs/tiny.yaml --nproc-per-node 4 parallel.tp=2 parallel.pp=2
    sophia-train --config configs/internvl3_38b.yaml --dry-run        # layout + memory check, no model
    srun ... python -m sophia_tools.train_cli --config RECIPE          # under SLURM or torchrun: one rank each

Outside a launcher, ``sophia-train`` starts ``--nproc-per-node`` ranks on this machine itself
(default: ``parallel.world_size`` of the recipe, else TP x PP). Under ``torchrun`` or ``srun`` each
process is one rank. Modes: ``train.mode=sophia`` (reward weights from the packed dataset) or
``train.mode=sft`` (every weight 1, the warm-up). ``--export-hf DIR`` exports the final model (an
existing DIR is refused unless ``--force``); ``--no-resume`` ignores checkpoints in
``checkpoint.save_dir``. Errors end as one line on stderr from rank 0 and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Callable

from sophia_common.log import global_rank

# Printed by the libraries on every rank before step 1, none actionable here (Megatron without
# TE/apex falls back to its own kernels on purpose; deprecations inside Megatron and torch).
KNOWN_WARNINGS = (
    ".*Transformer Engine and Apex are not installed.*",
    ".*Apex is not installed.*",
    ".*transformer_engine.*not installed.*",
    ".*is deprecated.*",
    ".*deprecated and will be removed.*",
    ".*torch.distributed._shard.*",
    ".*TypedStorage is deprecated.*",
    ".*Deprecated argument.*",
    ".*No device id is provided.*",
    ".*barrier\\(\\): using the device under current context.*",
    ".*grad attribute of a Tensor that is not a leaf Tensor.*",  # Megatron's optimizer probes main_grad
)


def quiet_known_warnings() -> None:
    for pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"megatron\..*|torch\..*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    body = __doc__.split("\n", 2)[2].replace("``", "")
    parser = argparse.ArgumentParser(
        prog="sophia-train", description="The SOPHIA off-policy update and the warm-up SFT on Megatron-Core.",
        epilog=body + "\nRecipe keys are overridden as key=value after the options (train.steps=5 parallel.pp=2; "
                      "lists as key=[a,b]).", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML (configs/*.yaml)")
    parser.add_argument("--nproc-per-node", type=int, default=None,
                        help="ranks to start on this machine when not run under torchrun/srun (default: the "
                             "recipe's parallel.world_size, else parallel.tp x parallel.pp)")
    parser.add_argument("--dry-run", action="store_true", help="validate the parallel plan and estimate memory")
    parser.add_argument("--world-size", type=int, default=None, help="GPUs for --dry-run (default: recipe)")
    parser.add_argument("--export-hf", default=None, help="export the final model to this HF directory")
    parser.add_argument("--force", action="store_true", help="replace an existing --export-hf directory")
    parser.add_argument("--no-resume", action="store_true", help="start fresh even if checkpoints exist")
    return parser.parse_known_args(argv)


def under_launcher() -> bool:
    return "RANK" in os.environ or "SLURM_PROCID" in os.environ


def train(args: argparse.Namespace, overrides: list[str]) -> int:
    from sophia_megatron.train.config import load_train_recipe

    if args.export_hf:
        overrides.append(f"checkpoint.export_hf={args.export_hf}")
    if args.force:
        overrides.append("checkpoint.export_force=true")
    if args.no_resume:
        overrides.append("checkpoint.resume=false")
    from sophia_tools.grpo.loop import grpo_requested, main_grpo  # train.mode=grpo: the GRPO loop

    if not args.dry_run and grpo_requested(args.config, overrides):
        return main_grpo(args, overrides, launch_local=launch_local, under_launcher=under_launcher())
    recipe = load_train_recipe(args.config, overrides)
    if args.dry_run:
        from sophia_megatron.plan import dry_run

        report = dry_run(recipe, args.config, world_size=args.world_size)
        print(json.dumps(report, indent=2))
        return 0 if report["fits"] else 1
    from sophia_megatron.train.config import check_runtime

    check_runtime(recipe)  # once, before any rank starts
    if not under_launcher():
        ranks = args.nproc_per_node or recipe.parallel.world_size or recipe.parallel.tp * recipe.parallel.pp
        if ranks > 1:
            from sophia_megatron.parallel import check_world_size

            check_world_size(ranks, recipe.parallel.tp, recipe.parallel.pp)
            return launch_local(sys.argv[1:] if args.argv is None else args.argv, ranks)
    elif args.nproc_per_node and global_rank() == 0:
        print("warning: --nproc-per-node is ignored under torchrun/srun (the launcher started the ranks)",
              file=sys.stderr)
    from sophia_megatron.parallel import destroy_parallel
    from sophia_megatron.train.trainer import Trainer

    try:
        Trainer(recipe).run()
    finally:
        destroy_parallel()
    return 0


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` less ``option VALUE`` / ``option=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def launch_local(argv: list[str], ranks: int) -> int:
    """Start ``ranks`` ranks of this command here (torchrun's launcher, run in-process) and wait.

    The launcher's own logs and failure report are silenced: a failing run ends with the one line
    its rank 0 printed, and the exit code of the failed rank.
    """
    import logging
    import socket

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = get_args_parser().parse_args([f"--nproc-per-node={ranks}", "--master-addr=127.0.0.1",
                                             f"--master-port={port}", "-m", "sophia_tools.train_cli",
                                             *without_option(argv, "--nproc-per-node")])
    for name in ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config, cmd, cmd_args = config_from_args(launcher)
    try:
        elastic_launch(config=config, entrypoint=cmd)(*cmd_args)
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items())
        return next((f.exitcode for _, f in failures if f.exitcode and f.exitcode > 0), 1)
    return 0


def rank_zero_errors(fn: Callable[[], int]) -> int:
    """Run ``fn``; a known error becomes one line from rank 0 (other ranks exit quietly), exit code 2."""
    from sophia_common.cli import UserError
    from sophia_common.config import ConfigError
    from sophia_common.contract import ContractError
    from sophia_common.mcore_checkpoint import CheckpointError

    known = (ConfigError, UserError, ContractError, CheckpointError)  # the trainer's NonFiniteLossError too
    try:
        return int(fn() or 0)
    except known as exc:
        if global_rank() == 0:
            print(f"error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return 2


def main(argv: list[str] | None = None) -> int:
    quiet_known_warnings()
    args, overrides = parse(argv)
    args.argv = argv
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        print(f"error: unknown option {unknown[0]} (see sophia-train --help)", file=sys.stderr)
        return 2
    return rank_zero_errors(lambda: train(args, overrides))


if __name__ == "__main__":
    sys.exit(main())
