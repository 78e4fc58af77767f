"""``sophia-convert inspect``: what a checkpoint directory holds, read from headers and marker files only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sophia_common.cli import UserError
from sophia_common.mcore_checkpoint import META_NAME, RANK_FILE


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


def inspect_dir(directory: str | Path) -> dict[str, Any]:
    directory = Path(directory)
    if (directory / META_NAME).is_file():
        return inspect_mcore(directory)
    if (directory / "config.json").is_file():
        return inspect_hf(directory)
    raise UserError(f"{directory}: neither a Megatron checkpoint ({META_NAME}) nor an HF one (config.json)")
