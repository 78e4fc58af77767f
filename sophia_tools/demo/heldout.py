"""The demo's held-out evaluation through ``sophia-eval`` (the ``evaluation`` package), batched on CPU.

    python -m sophia_tools.demo.heldout --model HF_DIR --questions eval_inputs.jsonl --out DIR
                                        [--seed S] [key=value ...]     # eval.* overrides of configs/tiny.yaml

What: the policy answers the held-out questions itself (the ``eval:`` section of ``configs/tiny.yaml``:
slow-thinking system prompt, temperature 1.0, top-p 0.8, 96 tokens), scored by the project's
verifier, with ``evaluation.run.evaluate`` on the generic ``jsonl`` benchmark format (categories =
question types); ``DIR/circles/records.jsonl`` and ``benchmark.json`` are its output. The only
difference from ``sophia-eval run``: :class:`BatchedTransformersEngine` decodes a batch of
questions together (left-padded) instead of one at a time, ~3x less CPU on the tiny policy, which is
what lets ``make ablations`` evaluate 16 checkpoints on 200 questions in its time budget. Sampling is
seeded per batch (not per request), so the answers are reproducible for the same batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rollout.engine_api import Completion, Failure, Request, SamplingParams, request_seed
from rollout.engines import TransformersEngine

BENCHMARK = "circles"


class BatchedTransformersEngine(TransformersEngine):
    """``TransformersEngine`` whose one-sample requests are decoded together, left-padded."""

    def generate(self, requests: list[Request], params: SamplingParams) -> list[list[Completion] | Failure]:
        if params.n != 1 or len(requests) < 2:
            return super().generate(requests, params)
        inputs = [self._inputs(request) for request in requests]
        ready = [index for index, item in enumerate(inputs) if not isinstance(item, Failure)]
        results: list[list[Completion] | Failure] = list(inputs)  # failures stay where they are
        if ready:
            completions = self._generate_batch([inputs[index] for index in ready], params,
                                               request_seed(params.seed, requests[ready[0]].key))
            for index, completion in zip(ready, completions, strict=True):
                results[index] = [completion]
        return results

    def _generate_batch(self, inputs: list[dict[str, Any]], params: SamplingParams,
                        seed: int | None) -> list[Completion]:
        torch = self._torch
        longest = max(item["input_ids"].shape[1] for item in inputs)
        ids = torch.full((len(inputs), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(inputs), longest), dtype=torch.long)
        for row, item in enumerate(inputs):
            length = item["input_ids"].shape[1]
            ids[row, longest - length:] = item["input_ids"][0]
            mask[row, longest - length:] = 1
        extra = {"pixel_values": torch.cat([item["pixel_values"] for item in inputs])} \
            if "pixel_values" in inputs[0] else {}
        if seed is not None:
            torch.manual_seed(seed)
        sampling = ({"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
                    if params.temperature > 0 else {"do_sample": False})
        with torch.inference_mode():
            output = self.model.generate(input_ids=ids, attention_mask=mask, **extra, **sampling,
                                         max_new_tokens=params.max_tokens, pad_token_id=self.pad_id,
                                         eos_token_id=sorted(self.stop_ids))
        return [self._completion(sequence[longest:].tolist(), params.max_tokens) for sequence in output]


def batched_engine(config: Any, role: str, *, vision: bool, max_tiles: int = 12) -> TransformersEngine:
    """Engine factory for ``evaluation.run.evaluate``: the batched engine (the recipe must say transformers)."""
    from sophia_common.cli import UserError

    if config.engine != "transformers":
        raise UserError(f"{role}.engine must be transformers for the demo's batched evaluation, not {config.engine}")
    return BatchedTransformersEngine(config, role, vision=vision, max_tiles=max_tiles)


def evaluate_heldout(model: Path, questions: Path, out: Path, seed: int, overrides: list[str]) -> dict[str, Any]:
    """Run the evaluation; returns pass@1 overall and per question type, the answers and their count."""
    from evaluation.config import load_config
    from evaluation.run import evaluate, parse_benchmarks
    from sophia_tools.demo import RECIPE

    config = load_config(RECIPE, [f"eval.policy.seed={seed}", *overrides])
    evaluate(config, str(model), parse_benchmarks(f"{BENCHMARK}:jsonl={questions}"), out,
             engine_factory=batched_engine)
    return read_heldout(out)


def read_heldout(out: Path) -> dict[str, Any]:
    """The numbers of an evaluation dir: correct / questions overall and per category, truncations."""
    records = [json.loads(line) for line in (out / BENCHMARK / "records.jsonl").read_text(encoding="utf-8").splitlines()]
    by_type: dict[str, dict[str, int]] = {}
    for record in records:
        entry = by_type.setdefault(record["category"], {"correct": 0, "questions": 0})
        entry["correct"] += bool(record["correct"])
        entry["questions"] += 1
    return {"questions": len(records), "correct": sum(bool(r["correct"]) for r in records), "by_type": by_type,
            "truncated": sum(r["finish_reason"] == "length" for r in records),
            "example": records[0]["response"] if records else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sophia_tools.demo.heldout", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="transformers-native InternVL dir")
    parser.add_argument("--questions", type=Path, required=True, help="held-out questions (generic jsonl format)")
    parser.add_argument("--out", type=Path, required=True, help="evaluation dir (resumed when it exists)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (eval.policy.seed)")
    parser.add_argument("overrides", nargs="*", help="eval.* overrides, e.g. eval.policy.temperature=0")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    print(json.dumps(evaluate_heldout(args.model, args.questions, args.out, args.seed, args.overrides)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
