"""Export a trainer checkpoint (Megatron distributed checkpoint) to an HF InternVL directory.

``sophia-convert mcore-to-hf --mcore-dir SAVE_DIR`` lands here when SAVE_DIR is a training
``checkpoint.save_dir`` rather than a converted checkpoint. One process (gloo, world size 1)
builds the model at TP=1 PP=1 from the converted checkpoint the run started from (the
frozen vision path comes from there), loads the language model from the distributed
checkpoint (Megatron reshards it from whatever TP/PP the run used), writes the converter's
torch layout and hands it to ``conversion.export.mcore_to_hf``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from sophia_common.cli import UserError


def export_training_checkpoint(save_dir: str | Path, out_dir: str | Path, *, fmt: str | None = None,
                               force: bool = False, step: int | None = None) -> dict[str, Any]:
    import torch
    from megatron.core import dist_checkpointing

    from conversion.export import mcore_to_hf
    from sophia_megatron.checkpoint_io import load_into, read_arch
    from sophia_megatron.model.internvl import InternVLModel, language_config
    from sophia_megatron.parallel import destroy_parallel, init_parallel
    from sophia_megatron.train.checkpointing import export_torch, latest_step

    save_dir = Path(save_dir)
    meta = json.loads((save_dir / "sophia_meta.json").read_text())
    step = latest_step(save_dir) if step is None else step
    if step is None:
        raise UserError(f"{save_dir}: no latest_checkpointed_iteration.txt (no finished checkpoint)")
    init_parallel(1, 1)
    try:
        arch, _ = read_arch(meta["mcore_dir"])
        model = InternVLModel(arch, language_config(arch, tp=1, pp=1), pre_process=True, post_process=True)
        load_into(model, meta["mcore_dir"], tp=1, pp=1, tp_rank=0, pp_rank=0)
        state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(save_dir / f"iter_{step:07d}"))
        with torch.no_grad():
            model.load_state_dict(state["model"], strict=False)
        with tempfile.TemporaryDirectory(dir=Path(out_dir).parent) as staging:
            export_torch(Path(staging) / "mcore", model, tp_rank=0, pp_rank=0, pp=1, source_mcore=meta["mcore_dir"])
            result = mcore_to_hf(Path(staging) / "mcore", out_dir, fmt=fmt, force=force)
    finally:
        destroy_parallel()
    return {**result, "step": step, "source": str(save_dir)}
