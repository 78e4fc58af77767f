"""``sophia-eval run | report | compare | formats``: the command-line side of ``evaluation``.

    sophia-eval run --config RECIPE --model HF_DIR --benchmarks NAME[:FORMAT]=PATH[,...] --out DIR
                    [--samples K] [key=value ...]
    sophia-eval report DIR                 # rewrite DIR/results.* from its benchmark dirs (array merge)
    sophia-eval compare DIR_A DIR_B [--out DIR]
    sophia-eval formats                    # the benchmark formats and where to download them

Overrides are keys of the recipe's ``eval:`` section (``eval.samples=4`` or ``samples=4``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run_main(argv: list[str]) -> int:
    from evaluation.config import load_config
    from evaluation.run import evaluate, parse_benchmarks

    parser = argparse.ArgumentParser(prog="sophia-eval run", description="evaluate a checkpoint (paper App. C)")
    parser.add_argument("--config", type=Path, help="recipe YAML with an eval: section (default: its defaults)")
    parser.add_argument("--model", help="HF checkpoint dir of the evaluated model (or eval.policy.model)")
    parser.add_argument("--benchmarks", required=True, action="append",
                        help="NAME[:FORMAT]=PATH, comma-separated or repeated; FORMAT defaults to NAME "
                             "(sophia-eval formats lists them)")
    parser.add_argument("--out", type=Path, required=True, help="output dir (resumed when it exists)")
    parser.add_argument("--samples", type=int, help="K responses per question (eval.samples)")
    parser.add_argument("overrides", nargs="*", help="recipe overrides, e.g. policy.max_tokens=4096")
    args = parser.parse_intermixed_args(argv)
    overrides = list(args.overrides) + ([f"eval.samples={args.samples}"] if args.samples is not None else [])
    config = load_config(args.config, overrides)
    # One path rule for every recipe: relative paths resolve against the working directory.
    results = evaluate(config, args.model or config.policy.model, parse_benchmarks(args.benchmarks), args.out)
    print(json.dumps({name: {key: b[key] for key in ("n", "pass@1", "pass@1_se", "pass@k", "missing")}
                      for name, b in results["benchmarks"].items()} | {"average": results["average"]}))
    return 0


def report_main(argv: list[str]) -> int:
    from evaluation.report import write_results

    parser = argparse.ArgumentParser(prog="sophia-eval report",
                                     description="rewrite DIR/results.{json,md,png} from DIR/*/benchmark.json")
    parser.add_argument("out", type=Path, help="an evaluation output dir")
    results = write_results(parser.parse_args(argv).out)
    print(json.dumps(results["average"]))
    return 0


def compare_main(argv: list[str]) -> int:
    from evaluation.report import compare, compare_table

    parser = argparse.ArgumentParser(prog="sophia-eval compare",
                                     description="per-benchmark pass@1 delta B - A with a paired bootstrap 95 % "
                                                 "interval")
    parser.add_argument("a", type=Path, help="evaluation dir A (e.g. the base model)")
    parser.add_argument("b", type=Path, help="evaluation dir B (e.g. after SOPHIA)")
    parser.add_argument("--out", type=Path, help="where compare.{json,md,png} go (default: B/compare_vs_<A>)")
    parser.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    args = parser.parse_args(argv)
    result = compare(args.a, args.b, args.out or args.b / f"compare_vs_{args.a.name}", args.resamples, args.seed)
    print(compare_table(result))
    return 0


def formats_main(argv: list[str]) -> int:
    from evaluation.formats import FORMATS

    argparse.ArgumentParser(prog="sophia-eval formats", description="list the benchmark formats").parse_args(argv)
    for fmt in FORMATS.values():
        print(f"{fmt.name:<18} {fmt.title}; {fmt.download}{'; LLM-judged in the paper' if fmt.judged else ''}")
    return 0
