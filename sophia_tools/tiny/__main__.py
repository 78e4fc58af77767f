"""Build every tiny fixture and print where each one is:

    python -m sophia_tools.tiny --out DIR [--seed 0] [--vllm-policy-dtype float32]

Besides ``build_all``'s fixtures it builds ``vllm_policy``, the tiny InternVL whose language model
vLLM's CPU backend accepts (head_dim 64; ``make demo`` warms it up and captions with it on vLLM).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sophia_tools.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="root dir; each fixture goes in a subdir")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--vllm-policy-dtype", default="bfloat16", choices=("bfloat16", "float32"),
                        help="weights dtype of the vllm_policy fixture (make demo: float32)")
    args = parser.parse_args(argv)

    from sophia_tools.tiny.internvl import build_all
    from sophia_tools.tiny.vllm_policy import build_vllm_policy

    start = time.perf_counter()
    paths = build_all(args.out, seed=args.seed)
    paths["vllm_policy"] = build_vllm_policy(Path(args.out) / "vllm_policy", seed=args.seed,
                                             dtype=args.vllm_policy_dtype)
    width = max(map(len, paths))
    for key, path in paths.items():
        print(f"{key:<{width}}  {path}")
    print(f"built in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
