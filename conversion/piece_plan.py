"""Where each byte of a TP rank's piece comes from, from the tensor shapes alone.

Every transform of the mapping table and every dim-0 TP cut is slicing and concatenation along
dim 0, so one rank's piece of a row is a list of runs: "rows [a, b) of source tensor s" or "n zero
rows" (vocabulary padding). The runs are found by running the row's own transform and cut
(``RowSharder``) on small integer tensors holding one code per source row, so they are the same
cut as on the real tensors by construction. The reader then reads each run from the safetensors
file straight into its place in the piece: no full tensor, no concatenation, no extra copy.

A row-parallel cut (dim 1 of a 2-D weight, ``linear_proj`` / ``linear_fc2``) is not a dim-0 run
list; ``piece_spec`` sizes it and the reader cuts every source row into TP runs itself.

Planning needs only names, shapes and dtypes (the safetensors headers), so it also declares every
rank file's tensors before any data is read, without meta tensors (whose first use imports
``torch._dynamo``: seconds of a 2-core machine's time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from conversion.internvl_mapping import RowSharder
from conversion.megatron_layout import REPLICATED, Split
from conversion.torch_stream import TensorSpec

if TYPE_CHECKING:
    import torch

ZERO = -1  # ``Run.source`` of zero rows


@dataclass(frozen=True)
class Run:
    """``rows`` rows of source ``source`` (index in ``Row.hf``; ``ZERO``: zeros) from source row ``start``."""

    source: int
    start: int
    rows: int


def is_row_parallel(mapping: object) -> bool:
    return isinstance(mapping, Split) and mapping.dim == 1


def effective_mapping(mapping: object, tp: int) -> object:
    """Without TP every cut keeps the whole tensor: plan it as replicated (a plain dim-0 run list)."""
    return REPLICATED if tp == 1 else mapping


@lru_cache(maxsize=4096)
def dim0_runs(transform: object, mapping: object, source_rows: tuple[int, ...], tp: int,
              tp_rank: int) -> tuple[Run, ...]:
    """The runs of one rank's piece of a dim-0 row (cached: every layer has the same shapes)."""
    import torch

    n = len(source_rows)
    # code = row * n + source + 1; 0 stays free for padding rows (PaddedVocab pads with zeros)
    codes = [torch.arange(rows, dtype=torch.int64) * n + (s + 1) for s, rows in enumerate(source_rows)]
    piece = RowSharder(transform, codes, mapping, tp).piece(tp_rank).reshape(-1)
    if piece.numel() == 0:
        return ()
    source = torch.where(piece == 0, ZERO, (piece - 1) % n)
    row = torch.where(piece == 0, 0, (piece - 1) // n)
    breaks = torch.ones_like(piece, dtype=torch.bool)
    breaks[1:] = (source[1:] != source[:-1]) | ((row[1:] != row[:-1] + 1) & (source[1:] != ZERO))
    starts = torch.nonzero(breaks).flatten().tolist() + [piece.numel()]
    return tuple(Run(int(source[a]), int(row[a]), b - a) for a, b in zip(starts[:-1], starts[1:], strict=True))


def piece_spec(transform: object, mapping: object, shapes: list[tuple[int, ...]], dtypes: list[torch.dtype],
               tp: int, tp_rank: int) -> TensorSpec:
    """dtype and shape of one rank's piece (fused tensors of mixed dtypes take the promoted dtype)."""
    import torch

    dtype = dtypes[0]
    for other in dtypes[1:]:
        dtype = torch.promote_types(dtype, other)
    mapping = effective_mapping(mapping, tp)
    if is_row_parallel(mapping):
        (shape,) = shapes
        if len(shape) != 2 or shape[1] % tp:
            raise ValueError(f"row-parallel tensor of shape {shape} cannot be cut in {tp}")
        return TensorSpec(dtype, (shape[0], shape[1] // tp))
    if len({shape[1:] for shape in shapes}) != 1:
        raise ValueError(f"tensors of shapes {shapes} cannot be concatenated on dim 0")
    runs = dim0_runs(transform, mapping, tuple(shape[0] for shape in shapes), tp, tp_rank)
    return TensorSpec(dtype, (sum(run.rows for run in runs), *shapes[0][1:]))


def row_bytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """Bytes of one dim-0 row of a tensor of this shape."""
    return math.prod(shape[1:]) * dtype.itemsize
