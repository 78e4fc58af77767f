"""``sophia-convert inspect``: what a checkpoint directory holds, read from headers and marker files only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sophia_common.cli import UserError
from sophia_common.mcore_checkpoint import META_NAME, RANK_FILE, TRACKER, TRAINING, meta_kind


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def inspect_hf(directory: Path) -> dict[str, Any]:
    from conversion.hf_checkpoint import HFCheckpoint

    ckpt = HFCheckpoint(directory)
    params = {"vision": 0, "projector": 0, "language": 0}
    for name in ckpt.names():
        part = ("vision" if name.startswith("vision_tower.") else
                "projector" if name.startswith("multi_modal_projector.") else "language")
        params[part] += _count(ckpt.shape(name))
    files = {directory / f for f in set(ckpt.weight_map.values())}
    return {"kind": "huggingface", "format": ckpt.format, "family": ckpt.arch.family,
            "layout": f"{len(files)} safetensors shard(s)", "dtype": ",".join(sorted({ckpt.dtype(n) for n in ckpt.names()})),
            "params_vision": params["vision"], "params_projector": params["projector"],
            "params_language": params["language"], "params_total": sum(params.values()),
            "bytes": sum(f.stat().st_size for f in files)}


def inspect_mcore(directory: Path) -> dict[str, Any]:
    from conversion.export import MegatronCheckpoint

    ckpt = MegatronCheckpoint(directory)
    files = sorted(ckpt.iter_dir.glob(f"mp_rank_*/{RANK_FILE}"))
    meta = ckpt.meta
    return {"kind": "megatron", "format": f"torch (converted from {meta['source_format']})",
            "family": ckpt.arch.family, "layout": f"TP={meta['tp']} PP={meta['pp']} spec={meta.get('spec')}",
            "layers_per_stage": [len(ckpt.layout.stage_layers(ckpt.arch.language.num_layers, p))
                                 for p in range(ckpt.layout.pp)],
            "rank_files": len(files), "padded_vocab": meta["padded_vocab_size"],
            "dtype": ",".join(meta.get("dtypes", [])), "bytes": sum(f.stat().st_size for f in files)}


def directory_kind(directory: str | Path) -> str | None:
    """What a directory holds, from its marker files alone: ``"training"`` (a trainer's save_dir),
    ``"megatron"`` (a converted checkpoint), ``"huggingface"`` (config.json) or None."""
    import json

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


def inspect_dir(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    if (directory / META_NAME).is_file():
        return inspect_mcore(directory)
    if (directory / "config.json").is_file():
        return inspect_hf(directory)
    raise UserError(f"{directory}: neither a Megatron checkpoint ({META_NAME}) nor an HF one (config.json)")
