"""A warmed-up tiny policy for GRPO on the demo's circle task (tests, ``sophia-profile grpo``).

A random tiny InternVL writes random text: every reward is 0, every group is dropped and GRPO
has nothing to learn from. The paper starts GRPO from the SOPHIA checkpoint, which answers in
the right format and is right about half the time on the filtered questions. This warm-up makes
the toy equivalent with a short plain-PyTorch SFT of the transformers-native checkpoint:
(image, question) -> ``"The answer is \\boxed{X}."``, where X is the gold answer with probability
``p_correct`` and another valid answer otherwise, so the policy learns the answer format and
space and only part of the image -> answer mapping. Prompts are rendered exactly as the GRPO
generator renders them (system prompt, ``<img>`` tokens, chat template).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

ANSWERS = {"colour": ["blue", "green", "red", "yellow"], "count": ["1", "2", "3"]}


def target_answer(row: dict[str, Any], rng: random.Random, p_correct: float) -> str:
    kind = "colour" if row["answer"] in ANSWERS["colour"] else "count"
    if rng.random() < p_correct:
        return row["answer"]
    return rng.choice([a for a in ANSWERS[kind] if a != row["answer"]])


def _example(tokenizer: Any, row: dict[str, Any], base: Path, system: str | None, answer: str) -> dict[str, Any]:
    from sophia_common.images import image_token_string, load_pixel_values

    pixels = load_pixel_values(base / row["image"], max_tiles=1)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": f"{image_token_string(pixels.shape[0])}\n{row['question']}"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target = tokenizer(f"The answer is \\boxed{{{answer}}}.", add_special_tokens=False)["input_ids"]
    return {"prompt": prompt_ids, "target": target, "pixels": pixels}


def warm_up(hf_dir: Path, questions: Path, out: Path, *, system: str | None, steps: int, p_correct: float,
            lr: float = 3e-3, batch_size: int = 4, seed: int = 0) -> dict[str, Any]:
    """SFT the language model of ``hf_dir`` on ``questions`` (rollout-input JSONL) and save to ``out``."""
    import torch
    from transformers import AutoTokenizer, InternVLForConditionalGeneration

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = InternVLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    stop = model.generation_config.eos_token_id
    stop = stop[0] if isinstance(stop, list) else stop
    rows = [json.loads(line) for line in questions.read_text(encoding="utf-8").splitlines()]
    for name, param in model.named_parameters():  # the language model learns, vision stays frozen
        param.requires_grad = "language_model" in name or name.startswith("lm_head")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        batch = [_example(tokenizer, row, questions.parent, system, target_answer(row, rng, p_correct))
                 for row in rng.sample(rows, min(batch_size, len(rows)))]
        loss = _loss(model, batch, stop, tokenizer.pad_token_id or 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(round(loss.item(), 4))
    from sophia_tools.demo.warmup import save_hf_model

    save_hf_model(model, hf_dir, out)
    return {"steps": steps, "loss_first": losses[0], "loss_last": losses[-1]}


def _loss(model: Any, batch: list[dict[str, Any]], stop: int, pad_id: int) -> Any:
    """Mean token NLL of the targets of a right-padded batch."""
    import torch

    sequences = [ex["prompt"] + ex["target"] + [stop] for ex in batch]
    longest = max(map(len, sequences))
    ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, (ex, seq) in enumerate(zip(batch, sequences, strict=True)):
        ids[row, :len(seq)] = torch.tensor(seq)
        labels[row, len(ex["prompt"]):len(seq)] = torch.tensor(seq[len(ex["prompt"]):])
        mask[row, :len(seq)] = 1
    pixels = torch.cat([ex["pixels"] for ex in batch])
    return model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels).loss
