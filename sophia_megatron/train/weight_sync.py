"""Weight sync Megatron -> generator: the policy's weights as transformers-native tensors, streamed.

``hf_weight_stream(model, arch, pstate, spec)`` walks the converter's mapping table
(``conversion.internvl_mapping``) row by row: the stage owning a row's parameter (found from the
layers each stage really holds, so uneven pipeline splits work) gathers it over
its TP group (``conversion.megatron_layout`` rules), sends the full tensor to global rank 0
when it lives on a later pipeline stage, and rank 0 inverts the row's transform into the
transformers-native ``(name, tensor)`` pairs, which it yields one row at a time, so at most one
full parameter is in flight. Every rank must iterate the stream to its end (the gathers are
collective); only rank 0 receives tensors.

This is the simplest correct path (the converter's own tables, streamed in memory); the
consumer decides where the tensors go: the transformers generator copies them into its
parameters, a vLLM engine would pass them to ``load_weights``, a remote one could write them.
Only the language model changes during GRPO; ``include_vision`` also streams the frozen vision
tower and projector (done once, at start, so the generator provably holds the trainer's weights).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from conversion.arch import InternVLArch, padded_vocab_size
from conversion.internvl_mapping import expand, table
from conversion.megatron_layout import layer_index, rename_layer, stored_once, tp_mapping


def _global_layers(model: Any) -> list[int]:
    """Global (0-based) indices of this stage's decoder layers, in local order (any pipeline split)."""
    return [layer.layer_number - 1 for layer in model.language_model.decoder.layers]


def _layout(model: Any, pstate: Any) -> tuple[dict[int, int], dict[int, list[int]]]:
    """(stage -> global rank of its TP-0/DP-0 rank, stage -> its global layer indices), from every rank."""
    mine = (pstate.pp_rank, pstate.tp_rank, pstate.dp_rank, _global_layers(model))
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    senders = {stage: rank for rank, (stage, tp_rank, dp_rank, _) in enumerate(everyone) if tp_rank == dp_rank == 0}
    layers = {stage: held for stage, _, _, held in everyone}
    return senders, layers


def _owner(name: str, layers: dict[int, list[int]], pp: int) -> tuple[int, str]:
    """(stage holding the global parameter ``name``, its local name there)."""
    index = layer_index(name)
    if index is not None:
        stage = next(s for s, held in layers.items() if index in held)
        return stage, rename_layer(name, layers[stage].index(index))
    if "output_layer." in name or "final_layernorm." in name:
        return pp - 1, name
    return 0, name  # embeddings and the vision path live on the first stage


def _gather_tp(tensor: torch.Tensor, name: str, tp: int) -> torch.Tensor:
    from megatron.core import parallel_state

    if tp == 1 or stored_once(name):
        return tensor
    shards = [torch.empty_like(tensor) for _ in range(tp)]
    dist.all_gather(shards, tensor.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    return tp_mapping(name, gated_mlp=True).gather(shards)


def _to_rank0(full: torch.Tensor | None, sender: int, device: torch.device) -> torch.Tensor | None:
    """Point-to-point on ``device`` (NCCL needs GPU tensors): ``sender`` sends (ndim, shape, data)."""
    rank = dist.get_rank()
    if sender == 0:
        return full.cpu() if rank == 0 else None
    if rank == sender:
        header = torch.tensor([full.dim(), *full.shape, *[0] * (8 - full.dim())], dtype=torch.int64, device=device)
        dist.send(header, 0)
        dist.send(full.contiguous(), 0)
    elif rank == 0:
        header = torch.empty(9, dtype=torch.int64, device=device)
        dist.recv(header, sender)
        shape = header[1:1 + int(header[0])].tolist()
        full = torch.empty(shape, dtype=torch.float32, device=device)
        dist.recv(full, sender)
        return full.cpu()
    return None


def hf_weight_stream(model: Any, arch: InternVLArch, pstate: Any, *, spec: str = "local",
                     include_vision: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """Transformers-native ``(name, tensor)`` of the policy, on global rank 0 (see module doc)."""
    lm = arch.language
    rows = expand(table(arch, padded_vocab=padded_vocab_size(lm.vocab_size, pstate.tp), spec=spec), arch)
    rows = [r for r in rows if include_vision or r.megatron.startswith("language_model.")]
    senders, layers = _layout(model, pstate)
    state = model.state_dict()
    for row in rows:
        stage, local_name = _owner(row.megatron, layers, pstate.pp)
        full = None
        if pstate.pp_rank == stage and pstate.dp_rank == 0:
            local = state[local_name].detach()
            full = _gather_tp(local, row.megatron, pstate.tp).float()
            if full.data_ptr() == local.data_ptr():  # never hand out the live parameter (TP=1, fp32)
                full = full.clone()
        full = _to_rank0(full, senders[stage], torch.device(pstate.device))
        if full is not None:
            yield from zip(row.hf, row.transform.to_hf(full, len(row.hf)), strict=True)
