"""HF InternVL -> Megatron-LM torch checkpoint, streamed: one pass, every rank file at once.

``hf_to_mcore`` plans every rank file from the safetensors headers alone (names, dtypes,
shapes; ``conversion.piece_plan``), opens one streaming writer per (TP, PP) rank, then walks
the mapping table once, handing each row's TP pieces to the writer threads of the rank files
that hold them (``conversion.piece_reader``): most pieces are copied from the shards to the rank
files inside the kernel, row-parallel ones are read into a reused ring buffer. Peak memory is
bounded by that ring and a budget of rows in flight, whatever the model size. Output goes to
``OUT.tmp-<pid>`` and is renamed at the end, so an interrupted run never leaves a directory that
looks complete (and the next run removes the temporaries of killed ones, see ``conversion.output``).

Fused tensors (q/k/v, gate/up) of mixed dtypes become one tensor of the promoted dtype (exact:
bf16 and fp16 are subsets of fp32); the metadata's ``hf_dtypes`` records each source tensor
whose dtype differs from its fused result, and the export casts it back, so every tensor
returns with its own dtype, bit for bit.

Layout written (what ``sophia_megatron`` loads)::

    OUT/latest_checkpointed_iteration.txt          "0"
    OUT/iter_0000000/mp_rank_TT[_PPP]/model_optim_rng.pt   {"model": {...}, "iteration": 0, ...}
    OUT/sophia_meta.json                           architecture, layout, source format/config/index
    OUT/hf_files/                                  config.json, tokenizer, chat template, ... (copied)
"""

from __future__ import annotations

import json
import math
import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conversion.arch import InternVLArch, padded_vocab_size
from conversion.hf_checkpoint import HFCheckpoint
from conversion.internvl_mapping import Row, expand, expected_hf_shapes, table
from conversion.megatron_layout import (
    layer_index,
    on_stage,
    rename_layer,
    stage_layers,
    stage_sizes,
    stored_once,
    tp_mapping,
)
from conversion.output import check_output_path, write_output_dir
from conversion.piece_plan import is_row_parallel, piece_spec
from conversion.piece_reader import PieceReader, RingArena, RowPlan
from conversion.torch_stream import StreamingTorchWriter, TensorSpec
from sophia_common.cli import UserError
from sophia_common.log import get_logger, progress
from sophia_common.mcore_checkpoint import (
    CHECKPOINT_VERSION,
    CONVERTED,
    HF_FILES,
    META_NAME,
    RANK_FILE,
    TRACKER,
    iter_dir_name,
    rank_dir_name,
)

log = get_logger("sophia.convert")


@dataclass(frozen=True)
class Layout:
    """TP x PP, layer spec, and the pipeline split (None: even; see ``megatron_layout.stage_sizes``)."""

    tp: int
    pp: int
    spec: str = "local"
    first_stage_layers: int | None = None
    last_stage_layers: int | None = None

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Layout:
        pp = meta["pp"]
        split = (meta.get("first_stage_layers"), meta.get("last_stage_layers")) if pp > 1 else (None, None)
        return cls(meta["tp"], pp, meta.get("spec", "local"), *split)

    def to_meta(self) -> dict[str, Any]:
        return {"tp": self.tp, "pp": self.pp, "spec": self.spec,
                "first_stage_layers": self.first_stage_layers, "last_stage_layers": self.last_stage_layers}

    def stage_layers(self, num_layers: int, pp_rank: int) -> range:
        return stage_layers(num_layers, self.pp, pp_rank, self.first_stage_layers, self.last_stage_layers)

    def rank_dir(self, tp_rank: int, pp_rank: int) -> str:
        return rank_dir_name(tp_rank, pp_rank, self.pp)

    def ranks(self) -> list[tuple[int, int]]:
        return [(t, p) for p in range(self.pp) for t in range(self.tp)]


def check_layout(arch: InternVLArch, layout: Layout) -> None:
    """The one TP/PP-vs-architecture check (conversion, the model builder and --dry-run): every problem."""
    lm = arch.language
    problems = []
    if layout.tp < 1 or layout.pp < 1:
        raise UserError(f"TP and PP must be >= 1 (got TP={layout.tp}, PP={layout.pp})")
    if lm.num_heads % layout.tp:
        problems.append(f"TP={layout.tp} does not divide the {lm.num_heads} attention heads")
    if lm.num_query_groups % layout.tp:
        problems.append(f"TP={layout.tp} does not divide the {lm.num_query_groups} query groups "
                        "(Megatron needs num_query_groups % TP == 0)")
    if layout.pp > 1:
        try:
            stage_sizes(lm.num_layers, layout.pp, layout.first_stage_layers, layout.last_stage_layers)
        except ValueError as exc:
            problems.append(str(exc))
    elif (layout.first_stage_layers, layout.last_stage_layers) != (None, None):
        problems.append("first/last stage layer counts need PP > 1")
    if problems:
        raise UserError("; ".join(problems))


def placements(name: str, arch: InternVLArch, layout: Layout) -> list[tuple[int, str]]:
    """(pp_rank, local name) of every stage holding the full Megatron parameter ``name``."""
    out = []
    for pp_rank in range(layout.pp):
        layers = layout.stage_layers(arch.language.num_layers, pp_rank)
        if on_stage(name, layers, pp_rank, layout.pp):
            index = layer_index(name)
            out.append((pp_rank, rename_layer(name, index - layers.start) if index is not None else name))
    return out


def writer_ranks(name: str, layout: Layout) -> range:
    """TP ranks whose file holds ``name``: all of them, or rank 0 for tensors stored once."""
    return range(1) if stored_once(name) else range(layout.tp)


def check_shapes(ckpt: HFCheckpoint, rows: list[Row]) -> None:
    expected = expected_hf_shapes(ckpt.arch)
    present = set(ckpt.names())
    needed = [name for row in rows for name in row.hf]
    missing = [name for name in needed if name not in present]
    if missing:
        raise UserError(f"{ckpt.directory}: tensor '{missing[0]}' missing ({len(missing)} missing in all)")
    unused = sorted(present - set(needed))
    if unused:
        raise UserError(f"{ckpt.directory}: unexpected tensor '{unused[0]}' ({len(unused)} not mapped)")
    for name in needed:
        if ckpt.shape(name) != expected[name]:
            raise UserError(f"{ckpt.directory}: tensor '{name}' has shape {list(ckpt.shape(name))}, but "
                            f"config.json implies {list(expected[name])}")


def plan_rank_files(ckpt: HFCheckpoint, rows: list[Row], layout: Layout) -> dict[tuple[int, int], dict]:
    """Every rank file's ``{local name: TensorSpec}``, from the headers alone (no data read)."""
    specs: dict[tuple[int, int], dict[str, TensorSpec]] = {rank: {} for rank in layout.ranks()}
    for row in rows:
        shapes, dtypes = [ckpt.shape(h) for h in row.hf], [ckpt.torch_dtype(h) for h in row.hf]
        mapping = tp_mapping(row.megatron, gated_mlp=True)
        for pp_rank, local in placements(row.megatron, ckpt.arch, layout):
            for tp_rank in writer_ranks(row.megatron, layout):
                specs[(tp_rank, pp_rank)][local] = piece_spec(row.transform, mapping, shapes, dtypes, layout.tp,
                                                              tp_rank)
    return specs


def _rank_skeleton(model_specs: dict[str, TensorSpec]) -> dict[str, Any]:
    return {"model": model_specs, "checkpoint_version": CHECKPOINT_VERSION, "iteration": 0}


class ReadAhead:
    """Keeps the kernel reading the source about ``window`` bytes ahead of the row being converted."""

    def __init__(self, ckpt: HFCheckpoint, rows: list[Row], window: int = 1 << 30) -> None:
        self.ckpt, self.rows, self.window = ckpt, rows, window
        self.sizes = [sum(_nbytes(ckpt, h) for h in row.hf) for row in rows]
        self.next = 0

    def up_to(self, index: int) -> None:
        """Prefetch rows after ``index`` until the window is covered (each row once)."""
        self.next = max(self.next, index)
        while self.next < len(self.rows) and sum(self.sizes[index:self.next]) < self.window:
            self.ckpt.prefetch(list(self.rows[self.next].hf))
            self.next += 1


def _nbytes(ckpt: HFCheckpoint, hf_name: str) -> int:
    return math.prod(ckpt.shape(hf_name)) * ckpt.torch_dtype(hf_name).itemsize


class RankFiles:
    """The open rank files, each written by its own thread (the zip writer releases the GIL).

    Writes of one file stay in order (one thread per file); different files are written at the
    same time, and all of it overlaps the reading of the next rows in the caller.
    """

    def __init__(self, specs: dict[tuple[int, int], dict[str, TensorSpec]], layout: Layout, iter_dir: Path) -> None:
        self.writers, self.pools = {}, {}
        for (t, p), model_specs in specs.items():
            (iter_dir / layout.rank_dir(t, p)).mkdir(parents=True)
            self.writers[(t, p)] = StreamingTorchWriter(iter_dir / layout.rank_dir(t, p) / RANK_FILE,
                                                        _rank_skeleton(model_specs))
            self.pools[(t, p)] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sophia-write-{t}-{p}")

    def submit(self, rank: tuple[int, int], name: str, tensor: Any) -> Future:
        return self.pools[rank].submit(self.writers[rank].write, name, tensor)

    def submit_ranges(self, rank: tuple[int, int], name: str, spec: TensorSpec, ranges: list) -> Future:
        return self.pools[rank].submit(self.writers[rank].write_ranges, name, spec, ranges)

    def close(self, complete: bool) -> None:
        """Wait for the writer threads; finish the files only if every tensor was written."""
        for pool in self.pools.values():
            pool.shutdown(wait=True, cancel_futures=not complete)
        for writer in self.writers.values():
            if complete:
                writer.close()
            writer.release()


class RowsInFlight:
    """Rows whose pieces are being written, oldest first; finishing one makes room for the next.

    Every row counts its source bytes against ``budget`` (this bounds the kernel's read-ahead and
    the memory of rows read whole); a row read into memory also holds a stretch of the arena.
    """

    def __init__(self, arena: RingArena, budget: int, bar: Any) -> None:
        self.arena, self.budget, self.bar = arena, budget, bar
        self.rows: deque[tuple[list[tuple[Future, int]], bool, int]] = deque()
        self.source_bytes = self.written = 0

    def finish_oldest(self) -> None:
        futures, in_arena, source_bytes = self.rows.popleft()
        for future, nbytes in futures:
            future.result()
            self.bar.update(nbytes)
            self.written += nbytes
        if in_arena:
            self.arena.release_oldest()
        self.source_bytes -= source_bytes

    def room_for(self, source_bytes: int) -> None:
        while self.rows and self.source_bytes + source_bytes > self.budget:
            self.finish_oldest()

    def memory_for(self, nbytes: int) -> tuple[Any, bool]:
        """(uint8 memory of ``nbytes``, whether it is in the arena), waiting for older rows as needed."""
        import torch

        while (start := self.arena.take(nbytes)) is None and self.rows:
            self.finish_oldest()
        if start is None:  # larger than the whole arena: fresh memory for this row alone
            return torch.empty(nbytes, dtype=torch.uint8), False
        return self.arena.memory[start:start + nbytes], True

    def add(self, futures: list[tuple[Future, int]], in_arena: bool, source_bytes: int) -> None:
        self.rows.append((futures, in_arena, source_bytes))
        self.source_bytes += source_bytes


def submit_row(files: RankFiles, reader: PieceReader, flight: RowsInFlight, row: Row, plan: RowPlan | None,
               places: list[tuple[int, str]], layout: Layout, source_bytes: int) -> None:
    """Hand one row's pieces to the rank files' writer threads, by the cheapest route the row allows.

    Dim-0 pieces are copied from the shards to the rank files inside the kernel (no read into this
    process); row-parallel pieces are read into the arena (``preadv`` straight into the TP slices);
    the rest is read whole and cut.
    """
    flight.room_for(source_bytes)
    ranks = writer_ranks(row.megatron, layout)
    in_arena = False
    if plan is not None and not is_row_parallel(plan.mapping):
        ranges = reader.file_ranges(row, plan, layout.tp)
        spec = {r: plan.specs.get(r) or next(iter(plan.specs.values())) for r in ranks}
        futures = [(files.submit_ranges((r, pp), f"model/{local}", spec[r], ranges[r]), spec[r].nbytes)
                   for pp, local in places for r in ranks]
    else:
        if plan is not None:
            memory, in_arena = flight.memory_for(plan.nbytes)
            pieces = reader.read(row, plan, layout.tp, memory)
        else:
            pieces = reader.read_whole(row, tp_mapping(row.megatron, gated_mlp=True), layout.tp, ranks)
        futures = [(files.submit((r, pp), f"model/{local}", piece), piece.numel() * piece.element_size())
                   for pp, local in places for r, piece in pieces.items()]
    flight.add(futures, in_arena, source_bytes)


def write_rank_files(ckpt: HFCheckpoint, rows: list[Row], layout: Layout, iter_dir: Path,
                     budget: int = 1 << 30) -> int:
    """Stream every mapped tensor into the rank files; returns bytes written.

    Rows are handed to the rank files' writer threads in order (``submit_row``) while earlier rows
    are still being written, up to ``budget`` source bytes in flight. Rows read into memory use
    one ring (``RingArena``) of twice the largest such row, reused from row to row, so memory is
    bounded whatever the depth of the model.
    """
    specs = plan_rank_files(ckpt, rows, layout)
    files = RankFiles(specs, layout, iter_dir)
    reader, ahead = PieceReader(ckpt), ReadAhead(ckpt, rows)
    plans = [reader.plan(row, tp_mapping(row.megatron, gated_mlp=True), layout.tp, writer_ranks(row.megatron, layout))
             for row in rows]
    in_memory = [p.nbytes for p in plans if p is not None and is_row_parallel(p.mapping)]
    arena = RingArena(2 * max(in_memory, default=0))
    total = sum(spec.nbytes for model_specs in specs.values() for spec in model_specs.values())
    try:
        with progress(total=total, unit="B", unit_scale=True, desc="hf-to-mcore") as bar:
            flight = RowsInFlight(arena, budget, bar)
            for index, (row, plan) in enumerate(zip(rows, plans, strict=True)):
                ahead.up_to(index)
                submit_row(files, reader, flight, row, plan, placements(row.megatron, ckpt.arch, layout), layout,
                           ahead.sizes[index])
            while flight.rows:
                flight.finish_oldest()
    except BaseException:
        files.close(complete=False)
        raise
    finally:
        reader.close()
    files.close(complete=True)
    return flight.written


def fused_dtype_overrides(ckpt: HFCheckpoint, rows: list[Row]) -> dict[str, str]:
    """transformers-native name -> dtype, for source tensors fused with partners of another dtype."""
    overrides = {}
    for row in rows:
        dtypes = {ckpt.dtype(h) for h in row.hf}
        if len(dtypes) > 1:
            overrides.update({h: ckpt.dtype(h) for h in row.hf})
    return overrides


def hf_to_mcore(hf_dir: str | Path, out_dir: str | Path, *, tp: int, pp: int, spec: str = "local",
                force: bool = False, first_stage_layers: int | None = None,
                last_stage_layers: int | None = None) -> dict[str, Any]:
    check_output_path(Path(out_dir), force)
    ckpt = HFCheckpoint(hf_dir)
    layout = Layout(tp, pp, spec, first_stage_layers, last_stage_layers)
    check_layout(ckpt.arch, layout)
    padded = padded_vocab_size(ckpt.arch.language.vocab_size, tp)
    rows = expand(table(ckpt.arch, padded_vocab=padded, spec=spec), ckpt.arch)
    check_shapes(ckpt, rows)
    written = 0

    def build(tmp: Path) -> None:
        nonlocal written
        written = write_rank_files(ckpt, rows, layout, tmp / iter_dir_name(0))
        (tmp / TRACKER).write_text("0")
        (tmp / HF_FILES).mkdir()
        for path in ckpt.aux_files():
            shutil.copy2(path, tmp / HF_FILES / path.name)
        index = ckpt.directory / "model.safetensors.index.json"
        if index.is_file():
            shutil.copy2(index, tmp / HF_FILES / index.name)
        meta = {"arch": ckpt.arch.to_dict(), "family": ckpt.arch.family, **layout.to_meta(),
                "padded_vocab_size": padded, "vision_tp": 1, "iteration": 0, "kind": CONVERTED,
                "source_format": ckpt.format, "source_config": ckpt.config,
                "source_weight_map": ckpt.weight_map,
                "dtypes": sorted({ckpt.dtype(n) for n in ckpt.names()}),
                "hf_dtypes": fused_dtype_overrides(ckpt, rows)}
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")

    write_output_dir(out_dir, force, build)
    log.info("wrote %s (TP=%d PP=%d, %.1f MB)", out_dir, tp, pp, written / 1e6)
    return {"bytes": written, "ranks": tp * pp}
