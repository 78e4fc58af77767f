"""``sophia-profile packing``: pack a file of sample lengths with ``plan_packs`` and print one JSON object.

Why: packing quality decides how much of the training bill is padding, and packing speed decides
whether a million-sample dataset builds in seconds or minutes. This benchmark measures both on
real length lists (dump them from a built dataset) or on a reproducible synthetic one.

Usage::

    sophia-profile packing --lengths FILE [--max-seq-len 32768] [--max-tiles M] [--oversize drop]
    sophia-profile packing --generate 100000 --distribution longtail --seed 0 --write FILE [...]
    python -m sophia_tools.bench.packing ...          # same thing without the console script

FILE holds one sample per line: ``tokens`` or ``tokens,tiles`` (blank lines are skipped; a line
without tiles counts as 0 tiles). ``--generate K`` writes K synthetic lengths to ``--write FILE``
and then packs them, so one command both creates and measures a benchmark input.

The ``longtail`` distribution models reasoning trajectories: log-normal with median
``LONGTAIL_MEDIAN`` tokens and log-space sigma ``LONGTAIL_SIGMA``, rounded to integers and clipped
to [``LONGTAIL_MIN``, ``LONGTAIL_MAX``] (about 1% of samples land on the upper clip).

The JSON reports ``seconds`` (``plan_packs`` alone, not file reading), ``efficiency`` (real tokens /
(packs x max_seq_len)) and ``lower_bound_packs`` = max(ceil(tokens / N), ceil(tiles / M)), which
no packing can beat, so ``packs - lower_bound_packs`` shows the distance from optimal.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from rollout.pack.planner import PackPlan, lower_bound_packs, plan_packs
from sophia_common.cli import UserError, run_guarded

DEFAULT_MAX_SEQ_LEN = 32768
LONGTAIL_MEDIAN = 3000
LONGTAIL_SIGMA = 1.0
LONGTAIL_MIN = 200
LONGTAIL_MAX = 32768
DISTRIBUTIONS = ("longtail",)


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    if (args.lengths is None) == (args.generate is None):
        raise UserError("give exactly one of --lengths FILE or --generate K (with --write FILE)")
    if args.generate is not None:
        if args.write is None:
            raise UserError("--generate needs --write FILE so the benchmark input can be reproduced")
        tokens, tiles = generate_lengths(args.generate, args.distribution, args.seed), None
        write_lengths(args.write, tokens)
        source = {"lengths": str(args.write), "distribution": args.distribution, "seed": args.seed}
    else:
        tokens, tiles = read_lengths(args.lengths)
        source = {"lengths": str(args.lengths)}

    started = time.perf_counter()
    plan = plan_packs(tokens, tiles, args.max_seq_len, args.max_tiles, oversize=args.oversize)
    seconds = time.perf_counter() - started

    report = {**source, **summarize(plan, tiles, seconds)}
    if args.plot is not None:
        plot_lengths_and_fill(args.plot, tokens, plan)
        report["plot"] = str(args.plot)
    print(json.dumps(report))
    return 0


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sophia-profile packing", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Pack a list of sample lengths with the packer training data uses (best-fit decreasing) "
                    "and print one JSON object: packs, efficiency (real tokens / (packs x max-seq-len)), the "
                    "lower bound on packs, dropped samples and the packing time. Give exactly one of "
                    "--lengths FILE or --generate K --write FILE.")
    parser.add_argument("--lengths", type=Path, metavar="FILE",
                        help="sample lengths to pack: one 'tokens' or 'tokens,tiles' per line (blank lines "
                             "skipped; no tiles means 0)")
    parser.add_argument("--max-seq-len", type=int, default=DEFAULT_MAX_SEQ_LEN, metavar="N",
                        help="tokens per pack (the trainer's sequence length)")
    parser.add_argument("--max-tiles", type=int, default=None, metavar="M",
                        help="image tiles per pack; unset: no tile cap")
    parser.add_argument("--oversize", choices=("drop", "truncate"), default="drop",
                        help="a sample longer than --max-seq-len: drop it, or pack it cut to --max-seq-len")
    parser.add_argument("--generate", type=int, metavar="K",
                        help="instead of --lengths: synthesise K sample lengths (needs --write)")
    parser.add_argument("--distribution", choices=DISTRIBUTIONS, default="longtail",
                        help=f"distribution of --generate: longtail = log-normal, median {LONGTAIL_MEDIAN} tokens, "
                             f"log-space sigma {LONGTAIL_SIGMA}, clipped to [{LONGTAIL_MIN}, {LONGTAIL_MAX}]")
    parser.add_argument("--seed", type=int, default=0, help="random seed of --generate")
    parser.add_argument("--write", type=Path, metavar="FILE",
                        help="where --generate writes the lengths it packs (so the input can be reused)")
    parser.add_argument("--plot", type=Path, metavar="PNG",
                        help="also write histograms of sample lengths and of pack fill to this PNG; unset: no plot")
    args = parser.parse_args(argv)
    if args.max_seq_len < 1:
        raise UserError(f"--max-seq-len must be >= 1, got {args.max_seq_len}")
    if args.max_tiles is not None and args.max_tiles < 0:
        raise UserError(f"--max-tiles must be >= 0, got {args.max_tiles}")
    if args.generate is not None and args.generate < 1:
        raise UserError(f"--generate must be >= 1, got {args.generate}")
    return args


def summarize(plan: PackPlan, tiles: np.ndarray | None, seconds: float) -> dict:
    packed_tiles = int(plan.pack_tiles.sum())
    bound = lower_bound_packs(plan.packed_tokens, packed_tiles, plan.max_tokens, plan.max_tiles)
    best_efficiency = plan.packed_tokens / (bound * plan.max_tokens) if bound else 0.0
    return {
        "samples": int(len(plan.sample_order) + len(plan.dropped)),
        "packed_samples": int(len(plan.sample_order)),
        "packs": plan.num_packs,
        "efficiency": round(plan.efficiency, 6),
        "seconds": round(seconds, 4),
        "lower_bound_packs": bound,
        "packs_over_lower_bound": plan.num_packs - bound,
        "efficiency_at_lower_bound": round(best_efficiency, 6),
        "tokens": plan.packed_tokens,
        "tiles": packed_tiles if tiles is not None else None,
        "dropped": int(len(plan.dropped)),
        "dropped_by_reason": {reason: int(len(ids)) for reason, ids in plan.dropped_by_reason().items()},
        "truncated": int(len(plan.truncated)),
        "max_seq_len": plan.max_tokens,
        "max_tiles": plan.max_tiles,
    }


def generate_lengths(count: int, distribution: str, seed: int) -> np.ndarray:
    """``count`` synthetic sample lengths; the same (distribution, seed) always gives the same list."""
    if distribution != "longtail":
        raise UserError(f"unknown distribution {distribution!r}; choose from {', '.join(DISTRIBUTIONS)}")
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(mean=np.log(LONGTAIL_MEDIAN), sigma=LONGTAIL_SIGMA, size=count)
    return np.clip(np.rint(raw), LONGTAIL_MIN, LONGTAIL_MAX).astype(np.int64)


def write_lengths(path: Path, tokens: np.ndarray) -> None:
    try:
        path.write_text("".join(f"{n}\n" for n in tokens.tolist()))
    except OSError as exc:
        raise UserError(f"{path}: cannot write lengths file ({exc.strerror})") from exc


def read_lengths(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Parse ``tokens`` or ``tokens,tiles`` per line; a bad line raises UserError naming file and line."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read lengths file ({exc})") from exc
    tokens: list[int] = []
    tiles: list[int] = []
    has_tiles = False
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(",")
        try:
            if len(fields) > 2:
                raise ValueError
            values = [int(field) for field in fields]
        except ValueError:
            raise UserError(
                f"{path}:{line_number}: expected 'tokens' or 'tokens,tiles' as integers, got {line.strip()!r}"
            ) from None
        if values[0] < 1:
            raise UserError(f"{path}:{line_number}: a sample needs at least 1 token, got {values[0]}")
        if len(values) == 2:
            if values[1] < 0:
                raise UserError(f"{path}:{line_number}: tile count must be >= 0, got {values[1]}")
            has_tiles = True
        tokens.append(values[0])
        tiles.append(values[1] if len(values) == 2 else 0)
    if not tokens:
        raise UserError(f"{path}: empty file: expected one sample length per line")
    return np.asarray(tokens, dtype=np.int64), np.asarray(tiles, dtype=np.int64) if has_tiles else None


def plot_lengths_and_fill(path: Path, tokens: np.ndarray, plan: PackPlan) -> None:
    """Two histograms: sample lengths (log count) and pack fill (pack tokens / max_seq_len)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (lengths_axis, fill_axis) = plt.subplots(1, 2, figsize=(11, 4))
    lengths_axis.hist(tokens, bins=100, log=True)
    lengths_axis.set(title=f"{len(tokens):,} sample lengths", xlabel="tokens", ylabel="samples")
    fill_axis.hist(plan.pack_tokens / plan.max_tokens, bins=100, range=(0, 1), log=True)
    fill_axis.set(
        title=f"{plan.num_packs:,} packs, efficiency {plan.efficiency:.4%}",
        xlabel="pack fill (tokens / max_seq_len)",
        ylabel="packs",
    )
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except OSError as exc:
        raise UserError(f"{path}: cannot write plot ({exc.strerror})") from exc
    finally:
        plt.close(figure)


if __name__ == "__main__":
    sys.exit(run_guarded(lambda: main(sys.argv[1:])))
