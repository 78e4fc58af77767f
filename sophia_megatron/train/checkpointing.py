"""Training checkpoints: Megatron distributed checkpoints for exact resumption, torch for export.

``save_training_state`` writes ``SAVE/iter_NNNNNNN/`` with Megatron ``dist_checkpointing``
(the language model's sharded state, the distributed optimizer's state and the LR schedule,
resharding-capable), then ``SAVE/latest_checkpointed_iteration.txt`` last, so an interrupted
save is never picked up. The frozen vision path is not saved: it is re-read from the
converted checkpoint, which ``SAVE/sophia_meta.json`` points to. The data position is the
step itself (the loader seeks in O(1)), so weights + optimizer + schedule + step is the
whole state of a run.

``export_torch`` writes the current weights in the converter's torch layout (same keys as
``sophia-convert hf-to-mcore`` output), so ``sophia-convert mcore-to-hf`` exports them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from conversion.arch import padded_vocab_size
from conversion.megatron_layout import stored_once

TRACKER = "latest_checkpointed_iteration.txt"
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


def latest_step(save_dir: str | Path | None) -> int | None:
    if not save_dir:
        return None
    tracker = Path(save_dir) / TRACKER
    return int(tracker.read_text().strip()) if tracker.is_file() else None


def _state(model: Any, optimizer: Any, scheduler: Any, step: int, is_loading: bool) -> dict[str, Any]:
    model_sd = model.sharded_state_dict()
    # dp_reshardable: every rank saves and loads its own optimizer shard, no gathering.
    optimizer_sd = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=OPTIMIZER_METADATA)
    return {"model": model_sd, "optimizer": optimizer_sd,
            "opt_param_scheduler": scheduler.state_dict(), "iteration": step}


def save_training_state(save_dir: str | Path, step: int, model: Any, optimizer: Any, scheduler: Any,
                        meta: dict[str, Any]) -> Path:
    from megatron.core import dist_checkpointing

    save_dir = Path(save_dir)
    target = save_dir / f"iter_{step:07d}"
    if dist.get_rank() == 0:
        target.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    dist_checkpointing.save(_state(model, optimizer, scheduler, step, is_loading=False), str(target))
    dist.barrier()
    if dist.get_rank() == 0:
        (save_dir / "sophia_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        tmp = save_dir / f".{TRACKER}.tmp"
        tmp.write_text(str(step))
        tmp.replace(save_dir / TRACKER)
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

    source = Path(save_dir) / f"iter_{step:07d}"
    state = dist_checkpointing.load(_state(model, optimizer, scheduler, step, is_loading=True), str(source))
    with torch.no_grad():  # fp32 main params are views of the model's parameters
        model.load_state_dict(state["model"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["opt_param_scheduler"])
    _restore_adam_steps(optimizer, scheduler.num_steps)
    if int(state["iteration"]) != step:
        raise RuntimeError(f"{source}: holds iteration {state['iteration']}, tracker says {step}")


def export_torch(out_dir: str | Path, model: Any, *, tp_rank: int, pp_rank: int, pp: int,
                 source_mcore: str | Path) -> None:
    """Write this rank's weights as ``OUT/iter_0000000/mp_rank_TT[_PPP]/model_optim_rng.pt``."""
    out_dir = Path(out_dir)
    rank_dir = out_dir / "iter_0000000" / (f"mp_rank_{tp_rank:02d}" + (f"_{pp_rank:03d}" if pp > 1 else ""))
    rank_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if not k.endswith("_extra_state") and (tp_rank == 0 or not stored_once(k))}
    torch.save({"model": state, "checkpoint_version": 3.0, "iteration": 0}, rank_dir / "model_optim_rng.pt")
    dist.barrier()
    if dist.get_rank() == 0:
        source = Path(source_mcore)
        meta = json.loads((source / "sophia_meta.json").read_text())
        tp = model.config.tensor_model_parallel_size
        meta.update(tp=tp, pp=pp, padded_vocab_size=padded_vocab_size(meta["arch"]["language"]["vocab_size"], tp))
        (out_dir / "sophia_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        shutil.copytree(source / "hf_files", out_dir / "hf_files", dirs_exist_ok=True)
        (out_dir / "latest_checkpointed_iteration.txt").write_text("0")
    dist.barrier()
