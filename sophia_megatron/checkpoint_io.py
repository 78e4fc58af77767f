"""Load a converted Megatron checkpoint (``sophia-convert hf-to-mcore``) into ``InternVLModel``.

When the checkpoint's TP/PP layout equals the running one, each rank reads its own
``mp_rank_TT[_PPP]/model_optim_rng.pt`` (memory-mapped). Otherwise every rank rebuilds its
piece from the full tensors (gathered across the checkpoint's TP ranks, re-cut for the
running layout), so a TP=8 checkpoint can be trained at TP=4 without a second conversion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conversion.arch import InternVLArch
from conversion.convert import Layout, placements
from conversion.export import MegatronCheckpoint
from conversion.megatron_layout import stored_once, tp_mapping


def read_arch(mcore_dir: str | Path) -> tuple[InternVLArch, dict[str, Any]]:
    ckpt = MegatronCheckpoint(mcore_dir)
    return ckpt.arch, ckpt.meta


def local_state_dict(mcore_dir: str | Path, *, tp: int, pp: int, tp_rank: int, pp_rank: int,
                     spec: str = "local", first_stage_layers: int | None = None,
                     last_stage_layers: int | None = None) -> dict[str, Any]:
    """This rank's model state dict, for the running layout ``(tp, pp)`` and pipeline split."""
    ckpt = MegatronCheckpoint(mcore_dir)
    if ckpt.layout.spec != spec:
        raise ValueError(f"{mcore_dir}: converted for the '{ckpt.layout.spec}' layer spec, model uses '{spec}' "
                         f"(convert again with --spec {spec})")
    running = Layout(tp, pp, spec, *((first_stage_layers, last_stage_layers) if pp > 1 else (None, None)))
    if ckpt.layout == running:
        state = dict(ckpt.rank_state(tp_rank, pp_rank))
        if tp_rank != 0:  # tensors stored once (the frozen vision path) live in TP rank 0's file
            state.update({k: v for k, v in ckpt.rank_state(0, pp_rank).items() if stored_once(k)})
        return state
    state = {}
    for row in ckpt.rows:
        for stage, local in placements(row.megatron, ckpt.arch, running):
            if stage == pp_rank:
                full = ckpt.full_tensor(row.megatron)
                if "output_layer" in row.megatron or "word_embeddings" in row.megatron:
                    full = _repad_vocab(full, ckpt.arch.language.vocab_size, tp)
                state[local] = tp_mapping(row.megatron, gated_mlp=True).shard(full, tp_rank, tp).clone()
    return state


def _repad_vocab(full: Any, vocab_size: int, tp: int) -> Any:
    import torch

    from conversion.arch import padded_vocab_size

    padded = padded_vocab_size(vocab_size, tp)
    real = full[:vocab_size]
    return torch.cat([real, real.new_zeros(padded - vocab_size, *real.shape[1:])])


def load_into(model: Any, mcore_dir: str | Path, *, tp: int, pp: int, tp_rank: int, pp_rank: int,
              spec: str = "local", first_stage_layers: int | None = None,
              last_stage_layers: int | None = None) -> None:
    """Load the converted weights into ``model`` (an ``InternVLModel`` stage), strictly."""
    state = local_state_dict(mcore_dir, tp=tp, pp=pp, tp_rank=tp_rank, pp_rank=pp_rank, spec=spec,
                             first_stage_layers=first_stage_layers, last_stage_layers=last_stage_layers)
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    # TE / local layers may carry non-tensor ``_extra_state`` entries that checkpoints omit.
    for key in own:
        if key.endswith("_extra_state") and key not in state:
            state[key] = own[key]
    model.load_state_dict(state, strict=True)
