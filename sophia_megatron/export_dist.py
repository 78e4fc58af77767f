"""Export a trainer checkpoint (Megatron distributed checkpoint) to an HF InternVL directory.

``sophia-convert mcore-to-hf --mcore-dir SAVE_DIR`` lands here when SAVE_DIR is a training
``checkpoint.save_dir`` rather than a converted checkpoint. One process (gloo, world size 1)
builds the model at TP=1 PP=1 from the converted checkpoint the run started from (the
frozen vision path comes from there), loads the language model from the distributed
checkpoint (Megatron reshards it from whatever TP/PP the run used), writes the converter's
torch layout and hands it to ``conversion.export.mcore_to_hf``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from sophia_common.cli import UserError
from sophia_common.mcore_checkpoint import TRACKER, CheckpointError, iter_dir_name, read_training_meta


def export_training_checkpoint(save_dir: str | Path, out_dir: str | Path, *, fmt: str | None = None,
                               force: bool = False, step: int | None = None) -> dict[str, Any]:
    import torch
    from megatron.core import dist_checkpointing

    from conversion.export import mcore_to_hf
    from conversion.output import check_output_path
    from sophia_megatron import engine
    from sophia_megatron.checkpoint_io import read_arch
    from sophia_megatron.parallel import destroy_parallel, init_parallel
    from sophia_megatron.train.checkpointing import latest_step, write_export_meta, write_rank_weights

    check_output_path(Path(out_dir), force)  # before loading anything
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
    save_dir = Path(save_dir)
    try:
        meta = read_training_meta(save_dir)
    except CheckpointError as exc:
        raise UserError(str(exc)) from exc
    step = latest_step(save_dir) if step is None else step
    if step is None:
        raise UserError(f"{save_dir / TRACKER}: file not found (no finished checkpoint)")
    pstate = init_parallel(1, 1)
    try:
        arch, source_meta = read_arch(meta.mcore_dir)
        spec = source_meta.get("spec", "local")
        model = engine.build_model(arch, engine.model_config(arch, tp=1, pp=1, training=False), pstate, spec=spec,
                                   mcore_dir=meta.mcore_dir)
        state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(save_dir / iter_dir_name(step)))
        with torch.no_grad():
            model.load_state_dict(state["model"], strict=False)
        with tempfile.TemporaryDirectory(dir=Path(out_dir).parent) as staging:
            write_rank_weights(Path(staging) / "mcore", model, tp_rank=0, pp_rank=0, pp=1)
            write_export_meta(Path(staging) / "mcore", tp=1, pp=1, source_mcore=meta.mcore_dir)
            result = mcore_to_hf(Path(staging) / "mcore", out_dir, fmt=fmt, force=force)
    finally:
        destroy_parallel()
    return {**result, "step": step, "source": str(save_dir)}
