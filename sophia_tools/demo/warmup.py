"""Brief warm-ups of the tiny models, so that the demo's rewards are earned and depend on captions.

The random tiny models of ``sophia_tools.tiny`` write random text: every reward would be 0 and
Eq. 6 would select nothing. The paper warms the policy up with SFT on general VQA before
sampling (docs/ALGORITHM.md §1.2) and uses a strong reasoning LLM; the demo does the same at toy scale:

* **captioner** (the policy InternVL) — SFT on (image, the rollout's caption prompt -> the true
  description) with the project's own stack: ``sophia-convert hf-to-mcore`` (TP=2),
  ``sophia-rollout pack`` (kind ``vqa``), ``sophia-train train.mode=sft`` on two ranks,
  exported back to HF. Only the language model learns; the vision tower and projector stay the
  frozen random ones. :func:`captioner_commands` lists those commands; the demo runs them.
* **reasoner** (the text LLM served by vLLM) — a short plain PyTorch fine-tune
  (:func:`finetune_reasoner`) on (description + question -> a short ``<think>`` trajectory and
  ``\\boxed{answer}``), where the answer is always what the *description* says. Rendered with the
  rollout's simulated-seeing prompt and the model's chat template exactly as ``sophia-rollout
  reason`` renders it, so at rollout it answers right from a right caption and wrong from a
  wrong one. Run as ``python -m sophia_tools.demo.warmup reasoner --base DIR --data FILE
  --prompt FILE --out DIR [--steps N]``.

Neither warm-up ever sees the rollout images or the verifier; the rewards of the rollout are
whatever the verifier makes of what the warmed-up models actually write.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from sophia_tools.demo import RECIPE, override

_IMAGE_PLACEHOLDER = re.compile(r"<image>\s*")


def simulated_seeing(template: str, question: str, caption: str) -> str:
    """The reasoner's user turn: ``rollout.prompts.Prompts.reasoning_messages`` (same substitution)."""
    question = _IMAGE_PLACEHOLDER.sub("", question).strip()
    return re.sub(r"\{caption\}|\{question\}",
                  lambda match: caption.strip() if match.group() == "{caption}" else question, template)


def captioner_commands(python: str, *, base_hf: Path, work: Path, system_prompt: Path, data: Path, steps: int,
                       lr: float, torchrun: list[str]) -> list[tuple[str, list[str]]]:
    """(name, argv) of the captioner warm-up: convert, pack the VQA records, SFT on 2 ranks, export.

    The pack renders the samples with ``system_prompt``: the system turn the tokenizer's chat template
    adds at caption time, so the warm-up trains the very prompt the caption stage sends.
    """
    mcore, packed = work / "mcore", work / "packed"
    recipe = str(RECIPE)
    return [
        ("convert", [python, "-m", "sophia_tools.convert_cli", "hf-to-mcore", "--hf-dir", str(base_hf), "--out-dir",
                     str(mcore), "--tp", "2", "--force"]),
        ("pack", [python, "-m", "sophia_tools.rollout_cli", "pack", "--config", recipe, override("pack.out", packed),
                  override("pack.tokenizer_dir", mcore / "hf_files"),
                  override("pack.default_system_prompt", system_prompt), override("pack.rollout_store", None),
                  override("pack.sources", [{"path": str(data), "kind": "vqa", "weight": 1.0}]), "--force"]),
        ("sft", [*torchrun, "-m", "sophia_tools.train_cli", "--config", recipe,
                 override("model.mcore_dir", mcore), override("data.path", packed), "train.mode=sft",
                 f"train.steps={steps}", f"train.lr={lr}", "train.warmup_steps=2", "train.min_lr_ratio=0.5",
                 override("checkpoint.save_dir", work / "checkpoints"), "checkpoint.save_interval=0",
                 "checkpoint.resume=false", "logging.tensorboard_dir=null",
                 override("logging.metrics_file", work / "metrics.jsonl"), "--export-hf", str(work / "hf")]),
    ]


# ---------------------------------------------------------------- the reasoner fine-tune


def _examples(tokenizer: Any, rows: list[dict], template: str) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target ids) per row, rendered as the vLLM engine renders a reasoning request."""
    examples = []
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for row in rows:
        messages = [{"role": "user", "content": simulated_seeing(template, row["question"], row["caption"])}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
        target = tokenizer(row["response"], add_special_tokens=False)["input_ids"] + [end]
        examples.append((prompt, target))
    return examples


def _batch(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    import torch

    longest = max(len(p) + len(t) for p, t in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), longest), dtype=torch.long)
    for row, (prompt, target) in enumerate(examples):
        sequence = prompt + target
        ids[row, :len(sequence)] = torch.tensor(sequence)
        labels[row, len(prompt):len(sequence)] = torch.tensor(target)
        mask[row, :len(sequence)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _accuracy(model: Any, tokenizer: Any, rows: list[dict], template: str) -> float:
    """Share of rows whose greedy answer (``\\boxed{}``) is the one the row's description implies."""
    import torch

    hits = 0
    for (prompt, _), row in zip(_examples(tokenizer, rows, template), rows, strict=True):
        with torch.inference_mode():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=96, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        text = tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)
        want = re.search(r"\\boxed\{([^}]*)\}", row["response"]).group(1)
        got = re.search(r"\\boxed\{([^}]*)\}", text)
        hits += bool(got) and got.group(1).strip() == want
    return hits / max(len(rows), 1)


def finetune_reasoner(base: Path, data: Path, prompt: Path, out: Path, *, steps: int, batch_size: int,
                      lr: float, seed: int) -> dict[str, Any]:
    """Fine-tune the tiny reasoner on ``data`` and save it (HF format) to ``out``; returns stats.

    The first rows (1/16 of them, 4 to 24) are held out and answered greedily after training:
    ``held_out_accuracy`` is the share answered as their description says.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    template = prompt.read_text(encoding="utf-8").strip()
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    held_out = min(24, max(4, len(rows) // 16))
    test, train = rows[:held_out], rows[held_out:]
    examples = _examples(tokenizer, train, template)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10)
                                                 * max(0.1, 1 - s / max(steps, 1)))
    rng, losses, tokens = random.Random(seed), [], 0
    model.train()
    for _ in range(steps):
        batch = _batch([examples[rng.randrange(len(examples))] for _ in range(batch_size)],
                       tokenizer.pad_token_id)
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(round(loss.item(), 4))
        tokens += int(batch["attention_mask"].sum())
    seconds = time.perf_counter() - started
    model.eval()
    accuracy = _accuracy(model, tokenizer, test, template)
    save_hf_model(model, base, out)
    return {"steps": steps, "batch_size": batch_size, "lr": lr, "train_rows": len(train),
            "loss_first": losses[0], "loss_last": losses[-1], "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 1), "train_seconds": round(seconds, 1),
            "held_out_rows": len(test), "held_out_accuracy": round(accuracy, 4)}


def save_hf_model(model: Any, base: Path, out: Path) -> None:
    """Save ``model`` to ``out`` atomically with the base checkpoint's tokenizer, processor and
    generation config (the files ``save_pretrained`` does not write)."""
    from sophia_common.atomic import publish_dir, temp_dir_for

    tmp = temp_dir_for(out)
    model.save_pretrained(tmp, safe_serialization=True)
    for path in base.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "added_tokens", "preprocessor",
                                 "generation_config")):
            shutil.copyfile(path, tmp / path.name)
    publish_dir(tmp, out, replace=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sophia_tools.demo.warmup",
                                     description="fine-tune the tiny reasoning LLM (the demo's warm-up)")
    parser.add_argument("what", choices=("reasoner",))
    parser.add_argument("--base", type=Path, required=True, help="the tiny reasoner to start from")
    parser.add_argument("--data", type=Path, required=True, help="reasoner_sft.jsonl of the demo task")
    parser.add_argument("--prompt", type=Path, required=True, help="the simulated-seeing prompt file")
    parser.add_argument("--out", type=Path, required=True, help="output HF dir")
    parser.add_argument("--stats", type=Path, required=True, help="JSON file for the run's numbers")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    stats = finetune_reasoner(args.base, args.data, args.prompt, args.out, steps=args.steps,
                              batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    args.stats.write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
