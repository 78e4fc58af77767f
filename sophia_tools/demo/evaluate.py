"""The demo's evaluation: the policy answers held-out image questions itself, before and after SOPHIA.

    python -m sophia_tools.demo.evaluate --model HF_DIR --inputs eval_inputs.jsonl --system FILE --out FILE

What: the policy InternVL (transformers-native checkpoint) gets each held-out image and its question
in one user turn, after the slow-thinking system prompt (the paper's inference setting), and answers
greedily, or sampled with ``--temperature`` / ``--top-p`` / ``--seed`` (the paper evaluates at 1.0 / 0.8);
one ``{id, difficulty, response, answer, truncated}`` line per question goes to ``--out``. The demo
then scores the file with ``sophia-rollout check`` (the rollout's own verifier) — nothing here
judges an answer. Before the update the warmed-up policy only knows how to describe images; after
it, the question is whether it learned from the selected trajectories to reason and answer.

How: the same prompt layout as the rollout's Transformers engine and the packer (``<img>`` +
``<IMG_CONTEXT>`` x 256 per tile + ``</img>``, a newline, the question), with pixels from
``sophia_common.images``; ``--limit-tokens`` caps each answer; ``--batch-size`` questions are decoded
together, left-padded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def answer_questions(model_dir: Path, inputs: Path, system: str, max_tokens: int, *, temperature: float = 0.0,
                     top_p: float = 1.0, seed: int = 0, batch_size: int = 32) -> list[dict[str, Any]]:
    """Answers of the policy in ``model_dir`` to every row of ``inputs`` (rollout input JSONL).

    Greedy when ``temperature`` is 0, else sampled (seeded by ``seed``); ``batch_size`` questions are
    decoded together (left-padded, so each answer is what the model writes for its question alone).
    """
    import torch
    from transformers import AutoTokenizer, InternVLForConditionalGeneration

    model = InternVLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    stops = model.generation_config.eos_token_id
    stops = sorted(stops if isinstance(stops, list) else [stops])
    pad = model.generation_config.pad_token_id
    pad = pad if pad is not None else stops[0]
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
        {"do_sample": False}
    rows = [json.loads(line) for line in inputs.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        torch.manual_seed(seed * 1_000_003 + start)
        records += _answer_batch(model, tokenizer, batch, inputs.parent, system,
                                 dict(max_new_tokens=max_tokens, eos_token_id=stops, pad_token_id=pad, **sampling))
    return records


def _answer_batch(model: Any, tokenizer: Any, rows: list[dict[str, Any]], root: Path, system: str,
                  generate: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    from sophia_common.images import image_token_string, load_pixel_values

    pixels = [load_pixel_values(root / row["image"], max_tiles=1) for row in rows]
    texts = [tokenizer.apply_chat_template(
        [{"role": "system", "content": system},
         {"role": "user", "content": f"{image_token_string(tiles.shape[0])}\n{row['question']}"}],
        tokenize=False, add_generation_prompt=True) for row, tiles in zip(rows, pixels, strict=True)]
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        output = model.generate(**encoded, pixel_values=torch.cat(pixels), **generate)
    stops = set(generate["eos_token_id"])
    records = []
    for row, sequence in zip(rows, output[:, encoded["input_ids"].shape[1]:], strict=True):
        ended = [position for position, token in enumerate(sequence.tolist()) if token in stops]
        new = sequence[:ended[0]] if ended else sequence
        records.append({"id": row["id"], "difficulty": row.get("difficulty"), "answer": row["answer"],
                        "response": tokenizer.decode(new, skip_special_tokens=True), "truncated": not ended})
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sophia_tools.demo.evaluate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="transformers-native InternVL dir")
    parser.add_argument("--inputs", type=Path, required=True,
                        help="rollout-input JSONL of held-out questions")
    parser.add_argument("--system", type=Path, required=True, help="system prompt file (slow-thinking)")
    parser.add_argument("--out", type=Path, required=True, help="JSONL of answers for sophia-rollout check")
    parser.add_argument("--limit-tokens", type=int, default=96, help="most new tokens per answer")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); else sampled")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass when sampling")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    parser.add_argument("--batch-size", type=int, default=32, help="questions decoded together")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    records = answer_questions(args.model, args.inputs, args.system.read_text(encoding="utf-8").strip(),
                               args.limit_tokens, temperature=args.temperature, top_p=args.top_p,
                               seed=args.seed, batch_size=args.batch_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    print(json.dumps({"questions": len(records), "seconds": round(time.perf_counter() - started, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
