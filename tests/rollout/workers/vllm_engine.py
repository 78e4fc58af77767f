"""Run ``VLLMEngine`` on the tiny reasoner and print what came back as one ``RESULT {json}`` line.

A separate process because vLLM spawns its engine core and workers (a ``__main__`` guard is
required) and must not live inside pytest. Usage: ``python vllm_engine.py MODEL_DIR``.
"""

from __future__ import annotations

import json
import sys


def main(model: str) -> None:
    from rollout.engine_api import EngineConfig, Failure, Request, SamplingParams
    from rollout.engines import make_engine

    config = EngineConfig(model=model, engine="vllm", dtype="bfloat16", enforce_eager=True, max_model_len=512,
                          max_num_seqs=16, max_tokens=16, seed=0)

    def ask(text: str, key: str) -> Request:
        return Request(({"role": "user", "content": text},), key=key)

    requests = [ask("How many red circles are there?", "a"), ask("Is 7 greater than 5?", "b"),
                ask("word " * 700, "too-long"), ask("How many red circles are there?", "a")]
    with make_engine(config, "reasoner.easy", vision=False) as engine:
        results = engine.generate(requests, SamplingParams.of(config, n=3))
        other_key = engine.generate([ask("How many red circles are there?", "c")], SamplingParams.of(config, n=3))
    report = [{"failure": [r.reason, r.detail]} if isinstance(r, Failure) else
              [[c.text, c.num_tokens, c.finish_reason] for c in r] for r in results + other_key]
    print("RESULT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
