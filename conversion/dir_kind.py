"""What kind of checkpoint directory a path is, from marker files alone, and the hint for a wrong one.

Used by the readers of both formats (a directory given to the wrong command gets one sentence that
says what it is and which command fits) and by ``sophia-convert inspect``; it imports no other
conversion module, so every reader can use it.
"""

from __future__ import annotations

import json
from pathlib import Path

from sophia_common.mcore_checkpoint import META_NAME, TRACKER, TRAINING, meta_kind


def directory_kind(directory: str | Path) -> str | None:
    """What a directory holds, from its marker files alone: ``"training"`` (a trainer's save_dir),
    ``"megatron"`` (a converted checkpoint), ``"huggingface"`` (config.json) or None."""
    directory = Path(directory)
    meta = directory / META_NAME
    if meta.is_file():
        try:
            fields = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return "megatron"
        return "training" if isinstance(fields, dict) and meta_kind(fields) == TRAINING else "megatron"
    if (directory / TRACKER).is_file():
        return "megatron"
    if (directory / "config.json").is_file():
        return "huggingface"
    return None


_WHAT = {"training": "a training checkpoint (a sophia-train checkpoint.save_dir)",
         "megatron": "a Megatron checkpoint", "huggingface": "a Hugging Face InternVL checkpoint"}


def wrong_input_hint(directory: str | Path, expected: str) -> str | None:
    """One sentence for a directory given to the wrong command, or None if it is not recognisably so.

    ``expected`` is what the command reads: ``"huggingface"`` (hf-to-mcore) or ``"megatron"``
    (mcore-to-hf, which also takes training checkpoints).
    """
    kind = directory_kind(directory)
    if kind is None or kind == expected or (expected == "megatron" and kind == "training"):
        return None
    if expected == "huggingface":
        return (f"{directory}: this is {_WHAT[kind]}, not a Hugging Face checkpoint; to turn it into one use "
                f"`sophia-convert mcore-to-hf --mcore-dir {directory} --out-dir OUT`")
    return (f"{directory}: this is {_WHAT[kind]}, not a Megatron checkpoint; to convert it use "
            f"`sophia-convert hf-to-mcore --hf-dir {directory} --out-dir OUT --tp T --pp P`")
