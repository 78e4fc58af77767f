"""The demo's evaluation: the policy answers held-out image questions itself, before and after SOPHIA.

    python -m sophia_tools.demo.evaluate --model HF_DIR --inputs eval_inputs.jsonl --system FILE --out FILE

What: the policy InternVL (transformers-native checkpoint) gets each held-out image and its question
in one user turn, after the slow-thinking system prompt (the paper's inference setting), and answers
greedily; one ``{id, difficulty, response, answer}`` line per question goes to ``--out``. The demo
then scores the file with ``sophia-rollout check`` (the rollout's own verifier) — nothing here
judges an answer. Before the update the warmed-up policy only knows how to describe images; after
it, the question is whether it learned from the selected trajectories to reason and answer.

How: the same prompt layout as the rollout's Transformers engine and the packer (``<img>`` +
``<IMG_CONTEXT>`` x 256 per tile + ``</img>``, a newline, the question), with pixels from
``sophia_common.images``; ``--limit-tokens`` caps each answer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def answer_questions(model_dir: Path, inputs: Path, system: str, max_tokens: int) -> list[dict[str, Any]]:
    """Greedy answers of the policy in ``model_dir`` to every row of ``inputs`` (rollout input JSONL)."""
    import torch
    from transformers import AutoTokenizer, InternVLForConditionalGeneration

    from sophia_common.images import image_token_string, load_pixel_values

    model = InternVLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    stops = model.generation_config.eos_token_id
    stops = sorted(stops if isinstance(stops, list) else [stops])
    pad = model.generation_config.pad_token_id
    records = []
    for row in map(json.loads, inputs.read_text(encoding="utf-8").splitlines()):
        pixels = load_pixel_values(inputs.parent / row["image"], max_tiles=1)
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": f"{image_token_string(pixels.shape[0])}\n{row['question']}"}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            output = model.generate(**encoded, pixel_values=pixels, do_sample=False,
                                    max_new_tokens=max_tokens, eos_token_id=stops,
                                    pad_token_id=pad if pad is not None else stops[0])
        new = output[0, encoded["input_ids"].shape[1]:]
        records.append({"id": row["id"], "difficulty": row.get("difficulty"), "answer": row["answer"],
                        "response": tokenizer.decode(new, skip_special_tokens=True),
                        "truncated": not any(int(token) in stops for token in new)})
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
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    records = answer_questions(args.model, args.inputs, args.system.read_text(encoding="utf-8").strip(),
                               args.limit_tokens)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    print(json.dumps({"questions": len(records), "seconds": round(time.perf_counter() - started, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
