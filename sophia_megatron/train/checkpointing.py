"""Training checkpoints: Megatron distributed checkpoints for exact resumption, torch for export.

``save_training_state`` writes ``SAVE/iter_NNNNNNN/`` with Megatron ``dist_checkpointing``
(the language model's sharded state, the distributed optimizer's state and the LR schedule),
then ``SAVE/latest_checkpointed_iteration.txt`` last, so an interrupted save is never picked
up. The frozen vision path is not saved: it is re-read from the converted checkpoint, which
``SAVE/sophia_meta.json`` (kind "training", ``sophia_common.mcore_checkpoint``) points to. The
data position is the step itself (the loader seeks in O(1)), so weights + optimizer + schedule
+ step is the whole state of a run -- provided the run is the same run: ``check_same_run``
refuses to resume when the source checkpoint, the dataset or a key that changes the saved
state's layout or the data order differs from what the save recorded.

``write_rank_weights`` + ``write_export_meta`` write the current weights in the converter's
torch layout (same keys as ``sophia-convert hf-to-mcore`` output), so ``sophia-convert
mcore-to-hf`` exports them. Neither makes a collective call: the caller owns the barriers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from conversion.arch import padded_vocab_size
from conversion.megatron_layout import stored_once
from sophia_common.cli import UserError
from sophia_common.mcore_checkpoint import (
    CHECKPOINT_VERSION,
    CONVERTED,
    HF_FILES,
    META_NAME,
    RANK_FILE,
    TrainingMeta,
    iter_dir_name,
    rank_dir_name,
    read_meta,
    read_tracker,
    read_training_meta,
    write_tracker,
    write_training_meta,
)

OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}
# Keys whose change makes a saved state unusable (optimizer shards are laid out per TP/PP, parameter
# names depend on the spec, dtypes on params_dtype) or changes which packs a step reads.
IDENTITY_KEYS = ("mcore_dir", "mcore_meta_sha256", "data", "data_manifest_sha256", "tp", "pp", "spec",
                 "params_dtype", "data_seed", "packs_per_step", "pipeline_split")


def latest_step(save_dir: str | Path | None) -> int | None:
    if not save_dir:
        return None
    step = read_tracker(save_dir)
    if step == "release":
        raise UserError(f"{Path(save_dir)}: tracker says 'release'; a training run saves numbered iterations")
    return step


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"


def run_identity(*, mcore_dir: str, data: str, tp: int, pp: int, spec: str, params_dtype: str, data_seed: int,
                 packs_per_step: int, pipeline_split: list[int | None] | None = None) -> dict[str, Any]:
    """What a resumed run must find unchanged (see ``IDENTITY_KEYS``)."""
    from sophia_common.contract import MANIFEST_NAME

    return {"mcore_dir": str(Path(mcore_dir).resolve()), "mcore_meta_sha256": _sha256(Path(mcore_dir) / META_NAME),
            "data": str(Path(data).resolve()), "data_manifest_sha256": _sha256(Path(data) / MANIFEST_NAME),
            "tp": tp, "pp": pp, "spec": spec, "params_dtype": params_dtype, "data_seed": data_seed,
            "packs_per_step": packs_per_step, "pipeline_split": pipeline_split or [None, None]}


def check_same_run(save_dir: str | Path, identity: dict[str, Any]) -> None:
    """Refuse to resume from ``save_dir`` when this run is not the run that saved there."""
    saved = read_training_meta(save_dir)
    recorded = dict(saved.identity) or {"mcore_dir": str(Path(saved.mcore_dir).resolve()),
                                        "data": str(Path(saved.data).resolve()), "tp": saved.tp, "pp": saved.pp}
    changed = [f"{key}: saved {recorded[key]!r}, now {identity.get(key)!r}"
               for key in IDENTITY_KEYS if key in recorded and recorded[key] != identity.get(key)]
    if changed:
        raise UserError(f"{Path(save_dir) / META_NAME}: checkpoint.save_dir holds another run ({'; '.join(changed)}); "
                        f"resuming would mix the two. Use a new checkpoint.save_dir, or pass --no-resume to "
                        f"start over in this one")


def _state(model: Any, optimizer: Any, scheduler: Any, step: int, is_loading: bool) -> dict[str, Any]:
    model_sd = model.sharded_state_dict()
    # dp_reshardable: every rank saves and loads its own optimizer shard, no gathering.
    optimizer_sd = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=OPTIMIZER_METADATA)
    return {"model": model_sd, "optimizer": optimizer_sd,
            "opt_param_scheduler": scheduler.state_dict(), "iteration": step}


def save_training_state(save_dir: str | Path, step: int, model: Any, optimizer: Any, scheduler: Any,
                        meta: TrainingMeta) -> Path:
    from megatron.core import dist_checkpointing

    save_dir = Path(save_dir)
    target = save_dir / iter_dir_name(step)
    if dist.get_rank() == 0:
        target.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(_state(model, optimizer, scheduler, step, is_loading=False), str(target))
    dist.barrier()
    if dist.get_rank() == 0:
        write_training_meta(save_dir, meta)
        write_tracker(save_dir, step)
    dist.barrier()
    return target


def _seed_empty_adam_state(optimizer: Any) -> None:
    """Give a never-stepped torch Adam the per-parameter state a loaded checkpoint overwrites.

    Megatron reads the step count from the inner optimizer's state while building the sharded
    state dict; a fresh ``torch.optim.AdamW`` (no Apex/TE fused Adam, as on CPU) has none yet.
    Seeding zeros here is what Megatron's own dummy-step initialisation achieves, without
    taking a step that would decay the weights.
    """
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = chained.optimizer
        for group in inner.param_groups:
            for param in group["params"]:
                if not inner.state[param]:
                    inner.state[param] = {"step": torch.zeros((), dtype=torch.float32),
                                          "exp_avg": torch.zeros_like(param.data),
                                          "exp_avg_sq": torch.zeros_like(param.data)}


def _restore_adam_steps(optimizer: Any, applied_steps: int) -> None:
    """Give every parameter its own, correct Adam step counter after a load.

    Without Apex/TE (torch's AdamW, as on CPU) Megatron 0.16's distributed optimizer does not
    bring the per-parameter ``step`` back from a dp_reshardable checkpoint, and where it sets
    one it shares a single tensor between all parameters (torch increments each in place).
    Adam's step is the number of updates applied, which the LR schedule counts exactly.
    """
    for chained in getattr(optimizer, "chained_optimizers", [optimizer]):
        for param_state in chained.optimizer.state.values():
            if "step" in param_state:
                param_state["step"] = torch.tensor(float(applied_steps))


def load_training_state(save_dir: str | Path, step: int, model: Any, optimizer: Any, scheduler: Any) -> None:
    from megatron.core import dist_checkpointing

    _seed_empty_adam_state(optimizer)

    source = Path(save_dir) / iter_dir_name(step)
    state = dist_checkpointing.load(_state(model, optimizer, scheduler, step, is_loading=True), str(source))
    with torch.no_grad():  # fp32 main params are views of the model's parameters
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["opt_param_scheduler"])
    _restore_adam_steps(optimizer, scheduler.num_steps)
    if int(state["iteration"]) != step:
        raise RuntimeError(f"{source}: holds iteration {state['iteration']}, tracker says {step}")


def write_rank_weights(out_dir: str | Path, model: Any, *, tp_rank: int, pp_rank: int, pp: int) -> Path:
    """Write this rank's weights as ``OUT/iter_0000000/mp_rank_TT[_PPP]/model_optim_rng.pt`` (no collectives)."""
    rank_dir = Path(out_dir) / iter_dir_name(0) / rank_dir_name(tp_rank, pp_rank, pp)
    rank_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if not k.endswith("_extra_state") and (tp_rank == 0 or not stored_once(k))}
    torch.save({"model": state, "checkpoint_version": CHECKPOINT_VERSION, "iteration": 0}, rank_dir / RANK_FILE)
    return rank_dir


def write_export_meta(out_dir: str | Path, *, tp: int, pp: int, source_mcore: str | Path,
                      first_stage_layers: int | None = None, last_stage_layers: int | None = None) -> None:
    """Finish an export directory once every rank's weights are in: metadata, HF files, tracker.

    ``first_stage_layers`` / ``last_stage_layers``: the pipeline split the rank files were written
    with (None: even), so the export reads each layer from the stage that holds it.
    """
    out_dir, source = Path(out_dir), Path(source_mcore)
    meta = read_meta(source)
    meta.update(kind=CONVERTED, tp=tp, pp=pp, first_stage_layers=first_stage_layers,
                last_stage_layers=last_stage_layers,
                padded_vocab_size=padded_vocab_size(meta["arch"]["language"]["vocab_size"], tp))
    (out_dir / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    shutil.copytree(source / HF_FILES, out_dir / HF_FILES, dirs_exist_ok=True)
    write_tracker(out_dir, 0)
