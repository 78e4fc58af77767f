"""Get one row's TP pieces from the safetensors shards without building full tensors.

A plain copy of the shards moves each byte once, inside the kernel; the converter gets close to it:

- a piece made of dim-0 runs of source rows (``conversion.piece_plan``: plain column cuts,
  ``[gate_i; up_i]``, grouped ``linear_qkv``, padded vocabulary, replicated tensors) is described
  as file ranges (``file_ranges``) that the rank file's writer copies file-to-file inside the
  kernel (``StreamingTorchWriter.write_ranges``): its bytes never enter this process;
- a row-parallel piece (columns of every row) is read with ``preadv`` straight into its TP slices
  (``read``), in a ``RingArena`` reused from row to row (no fresh memory faulted in per tensor,
  no file memory-mapped);
- anything else (original-format fused q/k/v, InternLM2 ``wqkv``, fused tensors of mixed dtypes)
  is read whole and cut by ``RowSharder`` (``read_whole``): the same values by another route.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conversion.hf_checkpoint import HFCheckpoint, preadv_exact
from conversion.internvl_mapping import Row, RowSharder
from conversion.megatron_layout import Replicated
from conversion.piece_plan import ZERO, dim0_runs, effective_mapping, is_row_parallel, piece_spec, row_bytes
from conversion.torch_stream import FileRange, TensorSpec

if TYPE_CHECKING:
    import torch


class RingArena:
    """One anonymous mapping (transparent huge pages where the kernel offers them), used as a ring.

    Rows take one stretch each, in order, and give it back in the same order once written
    (``release_oldest``), so the pieces of every row reuse the same memory: the kernel faults in
    and zeroes it once per run (in 2 MB pages), not once per tensor (in 4 KB pages).
    """

    ALIGN = 64

    def __init__(self, size: int) -> None:
        import mmap

        import torch

        self.size = max(self.ALIGN, -(-size // self.ALIGN) * self.ALIGN)
        self._map = mmap.mmap(-1, self.size)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self._map.madvise(mmap.MADV_HUGEPAGE)
        self.memory = torch.frombuffer(self._map, dtype=torch.uint8)
        self.live: deque[tuple[int, int]] = deque()  # (start, stop) of each row's stretch, oldest first

    @classmethod
    def aligned(cls, nbytes: int) -> int:
        return -(-nbytes // cls.ALIGN) * cls.ALIGN

    def take(self, nbytes: int) -> int | None:
        """Start of a free stretch of ``nbytes`` after the newest one (wrapping), or None if none is free."""
        nbytes = max(self.ALIGN, self.aligned(nbytes))
        if not self.live:
            start = 0 if nbytes <= self.size else None
        else:
            head, tail = self.live[-1][1], self.live[0][0]
            if head > tail:  # free: [head, size) and [0, tail)
                start = head if nbytes <= self.size - head else (0 if nbytes <= tail else None)
            else:  # wrapped: free [head, tail)
                start = head if nbytes <= tail - head else None
        if start is not None:
            self.live.append((start, start + nbytes))
        return start

    def release_oldest(self) -> None:
        self.live.popleft()


@dataclass(frozen=True)
class RowPlan:
    """How a row is read directly: the (effective) TP cut, each read piece's spec and byte offset."""

    mapping: object
    specs: dict[int, TensorSpec]
    offsets: dict[int, int]
    nbytes: int
    tp_ranks: range  # the ranks that get a piece (a replicated piece is read once, for the first)


class PieceReader:
    """``plan`` a row; a dim-0 plan then gives ``file_ranges``, a row-parallel one is ``read`` into
    memory of ``plan.nbytes``, and a row without a plan is read with ``read_whole``."""

    def __init__(self, ckpt: HFCheckpoint) -> None:
        self.ckpt, self._fds = ckpt, {}

    def plan(self, row: Row, mapping: object, tp: int, tp_ranks: range) -> RowPlan | None:
        """None when the row cannot be read straight into its pieces (see the module docstring)."""
        ckpt = self.ckpt
        dtypes = [ckpt.torch_dtype(h) for h in row.hf]
        if any(ckpt.whole_source(h) is None for h in row.hf) or len(set(dtypes)) > 1:
            return None
        if is_row_parallel(mapping) and tp > 1 and tp_ranks != range(tp):
            return None
        shapes = [ckpt.shape(h) for h in row.hf]
        mapping = effective_mapping(mapping, tp)
        read_ranks = range(tp_ranks.start, tp_ranks.start + 1) if isinstance(mapping, Replicated) else tp_ranks
        specs = {r: piece_spec(row.transform, mapping, shapes, dtypes, tp, r) for r in read_ranks}
        offsets, nbytes = {}, 0
        for r, spec in specs.items():
            offsets[r], nbytes = nbytes, nbytes + RingArena.aligned(spec.nbytes)
        return RowPlan(mapping, specs, offsets, nbytes, tp_ranks)

    def read(self, row: Row, plan: RowPlan, tp: int, memory: torch.Tensor) -> dict[int, Any]:
        """{tp_rank: piece} of a row-parallel plan, laid out in ``memory`` (uint8, ``plan.nbytes`` long)."""
        if not is_row_parallel(plan.mapping):
            raise ValueError(f"{row.megatron}: a dim-0 row is copied from its file ranges, not read")
        buffers = {r: memory[plan.offsets[r]:plan.offsets[r] + spec.nbytes] for r, spec in plan.specs.items()}
        spec = next(iter(plan.specs.values()))
        _read_row_parallel(self.ckpt.whole_source(row.hf[0]), self.ckpt.shape(row.hf[0]), spec.dtype, tp, buffers)
        return {r: buffers[r].view(spec.dtype).view(spec.shape) for r, spec in plan.specs.items()}

    def file_ranges(self, row: Row, plan: RowPlan, tp: int) -> dict[int, list[FileRange]]:
        """{tp_rank: the piece as ranges of the shard files}, for a dim-0 plan (``write_ranges``)."""
        places = [self.ckpt.whole_source(h) for h in row.hf]
        shapes = [self.ckpt.shape(h) for h in row.hf]
        width = row_bytes(shapes[0], next(iter(plan.specs.values())).dtype)
        ranges = {}
        for r in plan.specs:
            ranges[r] = [FileRange(None, 0, run.rows * width) if run.source == ZERO else
                         FileRange(self._fd(places[run.source][0]), places[run.source][1] + run.start * width,
                                   run.rows * width)
                         for run in dim0_runs(row.transform, plan.mapping, tuple(s[0] for s in shapes), tp, r)]
        first = next(iter(ranges))
        return {r: ranges.get(r, ranges[first]) for r in plan.tp_ranks}

    def _fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def read_whole(self, row: Row, mapping: object, tp: int, tp_ranks: range) -> dict[int, Any]:
        """Read the sources whole and cut them with ``RowSharder`` (fresh memory; for the rare rows)."""
        sharder = RowSharder(row.transform, [self.ckpt.get(h) for h in row.hf], mapping, tp)
        return {r: sharder.piece(r) for r in tp_ranks}


def _read_row_parallel(place: tuple, shape: tuple[int, ...], dtype: Any, tp: int, buffers: dict[int, Any]) -> None:
    """Rank i's piece is columns [i*c, (i+1)*c) of every row: TP slices per source row, in file order."""
    path, offset = place
    cut = shape[1] // tp * dtype.itemsize
    views = [memoryview(buffers[r].numpy()) for r in range(tp)]
    slices = [views[r][i * cut:(i + 1) * cut] for i in range(shape[0]) for r in range(tp)]
    fd = os.open(path, os.O_RDONLY)
    try:
        preadv_exact(fd, slices, offset, path)
    finally:
        os.close(fd)
