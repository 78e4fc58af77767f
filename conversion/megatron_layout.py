"""How a full (TP=1, PP=1) Megatron-Core state dict is laid out across TP ranks and PP stages.

Typed mappings in the style of Megatron-Bridge's ``param_mapping.py``: each parameter of a
GPTModel is column-parallel (split on dim 0), row-parallel (split on dim 1), a gated
column-parallel ``linear_fc1`` (``[gate; up]`` split so that rank i holds ``[gate_i; up_i]``)
or replicated. ``shard`` cuts a full tensor into one rank's piece, ``gather`` glues the
pieces back; the pair is exact (no arithmetic, only slicing and concatenation).

Pipeline stages hold a contiguous block of layers and use local layer indices in their keys;
``stage_sizes`` / ``stage_layers`` reproduce Megatron's placement (even, or uneven with given
first/last stage counts) and are the one place that computes it; ``rename_layer`` renames.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class Replicated:
    """Every TP rank holds the whole tensor (norms, row-parallel biases)."""

    def shard(self, full: torch.Tensor, tp_rank: int, tp: int) -> torch.Tensor:
        return full

    def gather(self, shards: list[torch.Tensor]) -> torch.Tensor:
        return shards[0]


@dataclass(frozen=True)
class Split:
    """Split evenly along ``dim`` (0: column-parallel, 1: row-parallel)."""

    dim: int

    def shard(self, full: torch.Tensor, tp_rank: int, tp: int) -> torch.Tensor:
        if full.shape[self.dim] % tp:
            raise ValueError(f"dim {self.dim} of size {full.shape[self.dim]} does not divide by TP={tp}")
        return full.chunk(tp, dim=self.dim)[tp_rank].contiguous()

    def gather(self, shards: list[torch.Tensor]) -> torch.Tensor:
        import torch

        return torch.cat(shards, dim=self.dim)


class GatedColumn:
    """``linear_fc1`` of a gated MLP: full ``[gate; up]``, rank i holds ``[gate_i; up_i]``."""

    def shard(self, full: torch.Tensor, tp_rank: int, tp: int) -> torch.Tensor:
        import torch

        gate, up = full.chunk(2, dim=0)
        return torch.cat([Split(0).shard(gate, tp_rank, tp), Split(0).shard(up, tp_rank, tp)]).contiguous()

    def gather(self, shards: list[torch.Tensor]) -> torch.Tensor:
        import torch

        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)


COLUMN, ROW, REPLICATED, GATED_COLUMN = Split(0), Split(1), Replicated(), GatedColumn()

# Parameter-name suffix -> TP mapping, for GPTModel with the local or the TE layer spec.
# Order matters: the first matching pattern wins.
GPT_TP_RULES: tuple[tuple[str, object], ...] = (
    (r"^vision\.",                                  REPLICATED),  # frozen vision path: vision TP = 1
    (r"embedding\.word_embeddings\.weight$",       COLUMN),
    (r"output_layer\.weight$",                      COLUMN),
    (r"linear_qkv\.(weight|bias)$",                 COLUMN),
    (r"linear_fc1\.weight$",                        "fc1"),   # gated or not, from the config
    (r"linear_fc1\.bias$",                          "fc1"),
    (r"linear_proj\.weight$",                       ROW),
    (r"linear_fc2\.weight$",                        ROW),
    (r"linear_(proj|fc2)\.bias$",                   REPLICATED),
    (r"(layer_norm|layernorm|final_layernorm|norm)[\w.]*(weight|bias)$", REPLICATED),
    (r"\._extra_state$",                           REPLICATED),  # TE/FP8 metadata, not a tensor split
)


def tp_mapping(name: str, gated_mlp: bool) -> object:
    """The TP mapping of a GPTModel parameter, by name."""
    for pattern, mapping in GPT_TP_RULES:
        if re.search(pattern, name):
            if mapping == "fc1":
                return GATED_COLUMN if gated_mlp else COLUMN
            return mapping
    raise KeyError(f"no tensor-parallel rule for parameter '{name}'")


def stored_once(name: str) -> bool:
    """Replicated frozen tensors (the vision path) are written once, in TP rank 0's file.

    Every TP rank of the first stage holds them in memory; writing them eight times would add
    ~90 GB to an InternVL-38B checkpoint at TP=8 for nothing.
    """
    return name.startswith("vision.")


def stage_sizes(num_layers: int, pp: int, first: int | None = None, last: int | None = None) -> list[int]:
    """Transformer layers per pipeline stage, as Megatron-Core places them.

    Even by default; ``first`` / ``last`` set the first / last stage's count (Megatron's
    ``num_layers_in_first_pipeline_stage`` / ``num_layers_in_last_pipeline_stage``) and the middle
    stages share the rest evenly. With one stage, it holds every layer (``first``/``last`` unused).
    """
    if pp == 1:
        return [num_layers]
    if (first is not None and first < 1) or (last is not None and last < 1):
        raise ValueError(f"first/last stage layers must be >= 1 (got {first}, {last})")
    rest = num_layers - (first or 0) - (last or 0)
    middle = pp - (first is not None) - (last is not None)
    if rest < 0 or (middle == 0 and rest != 0) or (middle > 0 and (rest == 0 or rest % middle)):
        split = f"first={first} last={last}" if (first, last) != (None, None) else "an even split"
        raise ValueError(f"{num_layers} language layers cannot be split over PP={pp} with {split} "
                         f"({rest} layers left for {middle} middle stage(s), which must share them evenly)")
    per_middle = rest // middle if middle else 0
    return [first if first is not None else per_middle] + [per_middle] * (pp - 2) \
        + [last if last is not None else per_middle]


def stage_layers(num_layers: int, pp: int, pp_rank: int, first: int | None = None,
                 last: int | None = None) -> range:
    """Global indices of the transformer layers held by pipeline stage ``pp_rank``."""
    sizes = stage_sizes(num_layers, pp, first, last)
    start = sum(sizes[:pp_rank])
    return range(start, start + sizes[pp_rank])


_LAYER = re.compile(r"(decoder\.layers\.)(\d+)(\.)")


def layer_index(name: str) -> int | None:
    match = _LAYER.search(name)
    return int(match.group(2)) if match else None


def rename_layer(name: str, new_index: int) -> str:
    return _LAYER.sub(lambda m: f"{m.group(1)}{new_index}{m.group(3)}", name, count=1)


def on_stage(name: str, layers: range, pp_rank: int, pp: int) -> bool:
    """Whether a global parameter name lives on stage ``pp_rank``."""
    index = layer_index(name)
    if index is not None:
        return index in layers
    if "embedding." in name:
        return pp_rank == 0
    if "output_layer." in name or "final_layernorm." in name:
        return pp_rank == pp - 1
    return pp_rank == 0  # anything else (e.g. a vision tower) lives with the embeddings


def shard_state_dict(full: dict[str, torch.Tensor], *, tp_rank: int, tp: int, pp_rank: int, pp: int,
                     num_layers: int, gated_mlp: bool, first: int | None = None,
                     last: int | None = None) -> dict[str, torch.Tensor]:
    """One (tp_rank, pp_rank)'s local state dict from a full TP=1 PP=1 GPTModel state dict."""
    layers = stage_layers(num_layers, pp, pp_rank, first, last)
    local = {}
    for name, tensor in full.items():
        if not on_stage(name, layers, pp_rank, pp):
            continue
        index = layer_index(name)
        local_name = rename_layer(name, index - layers.start) if index is not None else name
        local[local_name] = tp_mapping(name, gated_mlp).shard(tensor, tp_rank, tp)
    return local
