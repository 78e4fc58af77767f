"""Build every tiny fixture and print where each one is:

    python -m sophia_tools.tiny --out DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sophia_tools.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="root dir; each fixture goes in a subdir")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)

    from sophia_tools.tiny.internvl import build_all

    start = time.perf_counter()
    paths = build_all(args.out, seed=args.seed)
    width = max(map(len, paths))
    for key, path in paths.items():
        print(f"{key:<{width}}  {path}")
    print(f"built in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
