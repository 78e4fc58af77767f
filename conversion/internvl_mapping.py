"""The declarative table between transformers-native InternVL and our Megatron InternVL.

Rows read ``Megatron name  <-  transformers-native name(s), transform``; ``*`` is a layer
index. Names on the Megatron side are *full* names (TP=1, PP=1, global layer indices);
``megatron_layout`` shards them. Original remote-code checkpoints are first renamed to the
transformers-native names by ``hf_formats``, so one table serves both formats.

Transforms are typed and exact (slicing and concatenation only):
- ``Same``: one tensor, unchanged;
- ``Stack``: several tensors concatenated on dim 0 (vision ``qkv``; MLP ``[gate; up]``);
- ``GroupedQKV``: q, k, v interleaved per query group, Megatron's ``linear_qkv`` order;
- ``PaddedVocab``: rows padded with zeros to the Megatron vocabulary size, cut on export.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conversion.arch import InternVLArch

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Same:
    def to_megatron(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        return tensors[0]

    def to_hf(self, tensor: torch.Tensor, n_sources: int) -> list[torch.Tensor]:
        return [tensor]


@dataclass(frozen=True)
class Stack:
    def to_megatron(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        import torch

        return torch.cat(tensors, dim=0)

    def to_hf(self, tensor: torch.Tensor, n_sources: int) -> list[torch.Tensor]:
        return [t.clone() for t in tensor.chunk(n_sources, dim=0)]


@dataclass(frozen=True)
class GroupedQKV:
    num_heads: int
    num_groups: int
    head_dim: int

    def to_megatron(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        import torch

        q, k, v = tensors
        per_group = self.num_heads // self.num_groups
        rest = q.shape[1:]
        q = q.reshape(self.num_groups, per_group * self.head_dim, *rest)
        k = k.reshape(self.num_groups, self.head_dim, *rest)
        v = v.reshape(self.num_groups, self.head_dim, *rest)
        return torch.cat([q, k, v], dim=1).reshape(-1, *rest)

    def to_hf(self, tensor: torch.Tensor, n_sources: int) -> list[torch.Tensor]:
        per_group = self.num_heads // self.num_groups
        rest = tensor.shape[1:]
        grouped = tensor.reshape(self.num_groups, (per_group + 2) * self.head_dim, *rest)
        q, k, v = grouped.split([per_group * self.head_dim, self.head_dim, self.head_dim], dim=1)
        return [t.reshape(-1, *rest).clone() for t in (q, k, v)]


@dataclass(frozen=True)
class PaddedVocab:
    vocab_size: int
    padded_size: int

    def to_megatron(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        import torch

        (tensor,) = tensors
        pad = tensor.new_zeros(self.padded_size - self.vocab_size, *tensor.shape[1:])
        return torch.cat([tensor, pad], dim=0)

    def to_hf(self, tensor: torch.Tensor, n_sources: int) -> list[torch.Tensor]:
        return [tensor[: self.vocab_size].clone()]


@dataclass(frozen=True)
class Row:
    megatron: str
    hf: tuple[str, ...]
    transform: object


def _lm_norm_names(spec: str) -> tuple[str, str]:
    if spec == "te":
        return "self_attention.linear_qkv.layer_norm_weight", "mlp.linear_fc1.layer_norm_weight"
    return "input_layernorm.weight", "pre_mlp_layernorm.weight"


def table(arch: InternVLArch, *, padded_vocab: int, spec: str = "local") -> list[Row]:
    """Every row of the mapping for this architecture (wildcard ``*`` = layer index)."""
    lm, vt = arch.language, arch.vision
    same, stack = Same(), Stack()
    qkv = GroupedQKV(lm.num_heads, lm.num_query_groups, lm.head_dim)
    vocab = PaddedVocab(lm.vocab_size, padded_vocab)
    attn_norm, mlp_norm = _lm_norm_names(spec)
    V, P = "vision_tower.", "multi_modal_projector."  # noqa: N806 - short aliases keep rows aligned
    VL, L = f"{V}encoder.layer.*.", "language_model.model.layers.*."  # noqa: N806
    ML = "language_model.decoder.layers.*."  # noqa: N806
    rows = [
        Row("vision.tower.embeddings.cls_token",             (f"{V}embeddings.cls_token",), same),
        Row("vision.tower.embeddings.position_embedding",    (f"{V}embeddings.position_embeddings",), same),
        Row("vision.tower.embeddings.patch_embedding.weight", (f"{V}embeddings.patch_embeddings.projection.weight",), same),  # noqa: E501
        Row("vision.tower.embeddings.patch_embedding.bias",  (f"{V}embeddings.patch_embeddings.projection.bias",), same),
        Row("vision.tower.layers.*.attn.qkv.weight",         tuple(f"{VL}attention.{x}_proj.weight" for x in "qkv"), stack),
        Row("vision.tower.layers.*.attn.proj.weight",        (f"{VL}attention.projection_layer.weight",), same),
        Row("vision.tower.layers.*.attn.proj.bias",          (f"{VL}attention.projection_layer.bias",), same),
        Row("vision.tower.layers.*.fc1.weight",              (f"{VL}mlp.fc1.weight",), same),
        Row("vision.tower.layers.*.fc1.bias",                (f"{VL}mlp.fc1.bias",), same),
        Row("vision.tower.layers.*.fc2.weight",              (f"{VL}mlp.fc2.weight",), same),
        Row("vision.tower.layers.*.fc2.bias",                (f"{VL}mlp.fc2.bias",), same),
        Row("vision.tower.layers.*.norm1.weight",            (f"{VL}layernorm_before.weight",), same),
        Row("vision.tower.layers.*.norm2.weight",            (f"{VL}layernorm_after.weight",), same),
        Row("vision.tower.layers.*.ls1",                     (f"{VL}lambda_1",), same),
        Row("vision.tower.layers.*.ls2",                     (f"{VL}lambda_2",), same),
        Row("vision.projector.norm.weight",                  (f"{P}layer_norm.weight",), same),
        Row("vision.projector.norm.bias",                    (f"{P}layer_norm.bias",), same),
        Row("vision.projector.linear_1.weight",              (f"{P}linear_1.weight",), same),
        Row("vision.projector.linear_1.bias",                (f"{P}linear_1.bias",), same),
        Row("vision.projector.linear_2.weight",              (f"{P}linear_2.weight",), same),
        Row("vision.projector.linear_2.bias",                (f"{P}linear_2.bias",), same),
        Row("language_model.embedding.word_embeddings.weight", ("language_model.model.embed_tokens.weight",), vocab),
        Row(f"{ML}{attn_norm}",                              (f"{L}input_layernorm.weight",), same),
        Row(f"{ML}self_attention.linear_qkv.weight",         tuple(f"{L}self_attn.{x}_proj.weight" for x in "qkv"), qkv),
        Row(f"{ML}self_attention.linear_proj.weight",        (f"{L}self_attn.o_proj.weight",), same),
        Row(f"{ML}{mlp_norm}",                               (f"{L}post_attention_layernorm.weight",), same),
        Row(f"{ML}mlp.linear_fc1.weight",                    (f"{L}mlp.gate_proj.weight", f"{L}mlp.up_proj.weight"), stack),
        Row(f"{ML}mlp.linear_fc2.weight",                    (f"{L}mlp.down_proj.weight",), same),
        Row("language_model.decoder.final_layernorm.weight", ("language_model.model.norm.weight",), same),
        Row("language_model.output_layer.weight",            ("language_model.lm_head.weight",), vocab),
    ]
    if vt.qkv_bias:
        rows.append(Row("vision.tower.layers.*.attn.qkv.bias", tuple(f"{VL}attention.{x}_proj.bias" for x in "qkv"), stack))
    if vt.qk_norm:
        rows.append(Row("vision.tower.layers.*.attn.q_norm.weight", (f"{VL}attention.q_norm.weight",), same))
        rows.append(Row("vision.tower.layers.*.attn.k_norm.weight", (f"{VL}attention.k_norm.weight",), same))
    if vt.norm_type == "layer_norm":
        rows.append(Row("vision.tower.layers.*.norm1.bias", (f"{VL}layernorm_before.bias",), same))
        rows.append(Row("vision.tower.layers.*.norm2.bias", (f"{VL}layernorm_after.bias",), same))
    if lm.qkv_bias:
        rows.append(Row(f"{ML}self_attention.linear_qkv.bias", tuple(f"{L}self_attn.{x}_proj.bias" for x in "qkv"), qkv))
    if lm.qk_norm:  # per-head RMSNorm of q and k (families with qk_norm, e.g. Qwen3)
        rows.append(Row(f"{ML}self_attention.q_layernorm.weight", (f"{L}self_attn.q_norm.weight",), same))
        rows.append(Row(f"{ML}self_attention.k_layernorm.weight", (f"{L}self_attn.k_norm.weight",), same))
    return rows


def expand(rows: list[Row], arch: InternVLArch) -> list[Row]:
    """Rows with the ``*`` wildcard replaced by every layer index of its tower."""
    out = []
    for row in rows:
        if "*" not in row.megatron:
            out.append(row)
            continue
        count = arch.vision.num_layers if row.megatron.startswith("vision.") else arch.language.num_layers
        for i in range(count):
            sub: Callable[[str], str] = lambda name, i=i: name.replace("*", str(i))  # noqa: E731
            out.append(Row(sub(row.megatron), tuple(sub(h) for h in row.hf), row.transform))
    return out


class RowSharder:
    """One TP rank's Megatron piece of a row, built from the sources without the full tensor where it can.

    ``mapping.shard(transform.to_megatron(sources))`` copies every byte twice (the fused/padded full
    tensor, then the rank's piece). Per rank instead: a dim-0 piece of a ``Same`` or ``PaddedVocab`` row
    is a view of the source (zero copies, except zero padding rows); ``[gate_i; up_i]`` and a grouped
    ``linear_qkv`` piece are one concatenation of source slices (q heads are ordered by query group,
    so a rank's groups are a contiguous slice of q, k and v). Anything else falls back to the full
    tensor, built once for all ranks. The pieces are the same values either way (slicing only).
    """

    def __init__(self, transform: object, sources: list[torch.Tensor], mapping: object, tp: int) -> None:
        from conversion.megatron_layout import GatedColumn, Split

        self.transform, self.sources, self.mapping, self.tp = transform, sources, mapping, tp
        self._full = None
        column = isinstance(mapping, Split) and mapping.dim == 0
        self._direct = tp > 1 and ((column and isinstance(transform, (Same, PaddedVocab, GroupedQKV)))
                                   or (isinstance(mapping, GatedColumn) and isinstance(transform, Stack)
                                       and len(sources) == 2))

    def piece(self, tp_rank: int) -> torch.Tensor:
        if not self._direct:
            if self._full is None:
                self._full = self.transform.to_megatron(self.sources)
            return self.mapping.shard(self._full, tp_rank, self.tp)
        import torch

        from conversion.megatron_layout import COLUMN

        transform, tp = self.transform, self.tp
        if isinstance(transform, Same):
            return COLUMN.shard(self.sources[0], tp_rank, tp)
        if isinstance(transform, Stack):  # [gate_i; up_i]
            return torch.cat([COLUMN.shard(t, tp_rank, tp) for t in self.sources])
        if isinstance(transform, GroupedQKV):
            local = GroupedQKV(transform.num_heads // tp, transform.num_groups // tp, transform.head_dim)
            return local.to_megatron([COLUMN.shard(t, tp_rank, tp) for t in self.sources])
        (tensor,) = self.sources  # PaddedVocab: rows [start, stop) of the padded table
        rows = transform.padded_size // tp
        start, stop = tp_rank * rows, (tp_rank + 1) * rows
        real = tensor[min(start, transform.vocab_size):min(stop, transform.vocab_size)]
        if real.shape[0] == rows:
            return real
        return torch.cat([real, tensor.new_zeros(rows - real.shape[0], *tensor.shape[1:])])


def expected_hf_shapes(arch: InternVLArch) -> dict[str, tuple[int, ...]]:
    """The shape every transformers-native tensor must have, from the architecture alone."""
    vt, lm = arch.vision, arch.language
    c, p, f = vt.hidden_size, vt.patch_size, vt.ffn_hidden_size
    h, d = lm.hidden_size, lm.head_dim
    q, kv = lm.num_heads * d, lm.num_query_groups * d
    c_in = int(c / (arch.downsample_ratio ** 2))
    by_suffix = {
        "embeddings.cls_token": (1, 1, c), "embeddings.position_embeddings": (1, vt.num_positions, c),
        "patch_embeddings.projection.weight": (c, 3, p, p), "patch_embeddings.projection.bias": (c,),
        "attention.q_proj.weight": (c, c), "attention.k_proj.weight": (c, c), "attention.v_proj.weight": (c, c),
        "attention.q_proj.bias": (c,), "attention.k_proj.bias": (c,), "attention.v_proj.bias": (c,),
        "attention.projection_layer.weight": (c, c), "attention.projection_layer.bias": (c,),
        "mlp.fc1.weight": (f, c), "mlp.fc1.bias": (f,), "mlp.fc2.weight": (c, f), "mlp.fc2.bias": (c,),
        "layer_norm.weight": (c_in,), "layer_norm.bias": (c_in,),
        "linear_1.weight": (h, c_in), "linear_1.bias": (h,), "linear_2.weight": (h, h), "linear_2.bias": (h,),
        "embed_tokens.weight": (lm.vocab_size, h), "lm_head.weight": (lm.vocab_size, h),
        "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
        "self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,),
        "self_attn.q_norm.weight": (d,), "self_attn.k_norm.weight": (d,),
        "self_attn.o_proj.weight": (h, q), "mlp.gate_proj.weight": (lm.ffn_hidden_size, h),
        "mlp.up_proj.weight": (lm.ffn_hidden_size, h), "mlp.down_proj.weight": (h, lm.ffn_hidden_size),
    }
    shapes = {}
    for row in expand(table(arch, padded_vocab=lm.vocab_size), arch):
        for name in row.hf:
            suffix = next((s for s in by_suffix if name.endswith(s)), None)
            if suffix is not None:
                shapes[name] = by_suffix[suffix]
            else:  # norms, layer scales: one vector of the tower's or the LM's width
                shapes[name] = (c,) if name.startswith("vision_tower.") else (h,)
    return shapes
