"""The streamed converter's parts: pieces read straight from the shards, kernel-copied records, the ring.

The converter no longer builds full tensors: each TP piece is planned as runs of source rows
(``piece_plan``), read into reused memory or copied file-to-file (``piece_reader``,
``StreamingTorchWriter.write_ranges``). These tests hold each route to the plain one
(``RowSharder`` on tensors read whole) byte for byte.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from conversion.arch import padded_vocab_size
from conversion.convert import Layout, write_rank_files
from conversion.hf_checkpoint import HFCheckpoint
from conversion.internvl_mapping import RowSharder, expand, table
from conversion.megatron_layout import tp_mapping
from conversion.piece_plan import is_row_parallel, piece_spec
from conversion.piece_reader import PieceReader, RingArena
from conversion.torch_stream import FileRange, StreamingTorchWriter, TensorSpec
from sophia_common.cli import UserError
from tests.multirank import REPO, subprocess_env


def _range_bytes(ranges: list[FileRange]) -> bytes:
    return b"".join(bytes(r.nbytes) if r.fd is None else os.pread(r.fd, r.nbytes, r.offset) for r in ranges)


@pytest.mark.parametrize("fixture", ("vit300m_qwen2_hf", "vit6b_qwen2_original"))
def test_every_route_gives_the_row_sharder_pieces(tiny_root, fixture):
    # Bugs caught: a range from the wrong rows or source (q/k/v group order, [gate_i; up_i]),
    # vocabulary padding missing, a row-parallel slice off by a column or not fully read (stale
    # bytes left: the memory starts as 0xAB), a declared spec that differs from the piece.
    ckpt = HFCheckpoint(tiny_root[fixture])
    reader, routes = PieceReader(ckpt), set()
    try:
        for tp in (1, 2):
            rows = expand(table(ckpt.arch, padded_vocab=padded_vocab_size(ckpt.arch.language.vocab_size, tp)),
                          ckpt.arch)
            for row in rows:
                mapping = tp_mapping(row.megatron, gated_mlp=True)
                sharder = RowSharder(row.transform, [ckpt.get(h) for h in row.hf], mapping, tp)
                plan = reader.plan(row, mapping, tp, range(tp))
                if plan is None:
                    got, route = reader.read_whole(row, mapping, tp, range(tp)), "whole"
                elif is_row_parallel(plan.mapping):
                    got = reader.read(row, plan, tp, torch.full((plan.nbytes,), 0xAB, dtype=torch.uint8))
                    route = "row-parallel"
                else:
                    got, route = reader.file_ranges(row, plan, tp), "ranges"
                routes.add(route)
                for r in range(tp):
                    want = sharder.piece(r).contiguous()
                    spec = piece_spec(row.transform, mapping, [ckpt.shape(h) for h in row.hf],
                                      [ckpt.torch_dtype(h) for h in row.hf], tp, r)
                    assert (spec.dtype, spec.shape) == (want.dtype, tuple(want.shape)), row.megatron
                    if route == "ranges":
                        assert _range_bytes(got[r]) == want.view(-1).view(torch.uint8).numpy().tobytes(), \
                            (row.megatron, r)
                    else:
                        assert (got[r].dtype, tuple(got[r].shape)) == (want.dtype, tuple(want.shape)), row.megatron
                        assert torch.equal(got[r], want), (row.megatron, r)
    finally:
        reader.close()
    assert routes >= ({"ranges", "row-parallel"} | ({"whole"} if fixture.endswith("original") else set()))


def test_write_ranges_stores_file_bytes_and_zeros(tmp_path):
    # Bugs caught: the placeholder's (never written) bytes stored instead of the file ranges,
    # a range copied from the wrong offset or in the wrong order, a wrong total accepted.
    data = torch.randint(-2**15, 2**15, (4096,), dtype=torch.int16)
    (tmp_path / "src.bin").write_bytes(b"header!!" + data.numpy().tobytes())
    fd = os.open(tmp_path / "src.bin", os.O_RDONLY)
    try:
        specs = {"a": TensorSpec(torch.int16, (3, 64)), "b": TensorSpec(torch.float32, (5,)),
                 "c": TensorSpec(torch.int16, (2, 64))}
        writer = StreamingTorchWriter(tmp_path / "out.pt", {"model": specs, "iteration": 0})
        # a = rows 10..11 of data, one zero row; c = row 40, then row 2 (out of file order)
        writer.write_ranges("model/a", specs["a"], [FileRange(fd, 8 + 10 * 128, 256), FileRange(None, 0, 128)])
        writer.write("model/b", torch.arange(5, dtype=torch.float32))
        with pytest.raises(ValueError, match="hold 128 bytes"):
            writer.write_ranges("model/c", specs["c"], [FileRange(fd, 8, 128)])
        writer.write_ranges("model/c", specs["c"], [FileRange(fd, 8 + 40 * 128, 128), FileRange(fd, 8 + 2 * 128, 128)])
        writer.close()
    finally:
        os.close(fd)
    rows = data.view(64, 64)
    for mmap in (False, True):
        state = torch.load(tmp_path / "out.pt", weights_only=True, mmap=mmap)
        assert torch.equal(state["model"]["a"], torch.cat([rows[10:12], torch.zeros(1, 64, dtype=torch.int16)]))
        assert torch.equal(state["model"]["b"], torch.arange(5, dtype=torch.float32))
        assert torch.equal(state["model"]["c"], torch.stack([rows[40], rows[2]]))


def test_ring_arena_hands_out_stretches_that_never_overlap():
    # Bug caught: a stretch handed out while an older row's pieces in it are still being written
    # (the rank files would get the next row's bytes), or memory not reused after release.
    arena = RingArena(1024)
    assert arena.take(400) == 0 and arena.take(400) == 448
    assert arena.take(400) is None  # 128 bytes left at the end, none at the start
    arena.release_oldest()
    assert arena.take(500) is None  # [0, 448) is free but too small
    assert arena.take(400) == 0  # wraps to the front
    assert arena.take(1) is None  # wrapped: nothing between the newest (ends 448) and the oldest (448)
    arena.release_oldest()
    arena.release_oldest()
    assert arena.take(1024) == 0 and not arena.take(64)


def test_benchmark_child_reports_its_own_peak_memory():
    # Bug caught: ``ru_maxrss`` keeps the parent's peak across fork + exec, so the conversion's
    # "peak RSS" was the synthesiser's (the same 1.8 GB at every depth whatever the converter did).
    ballast = b"\x01" * (200 * 2**20)  # touched pages: this process's peak is now > 200 MB
    proc = subprocess.run([sys.executable, "-c", "from sophia_tools.bench.conversion import peak_rss; "
                           "print(peak_rss())"], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, check=True)
    assert len(ballast) == 200 * 2**20
    assert int(proc.stdout) < 100 * 2**20


def _row_parallel_row_then_intact_rows(ckpt: HFCheckpoint, rows: list, tp: int) -> tuple[list, Path, int]:
    """Rows whose data survives cutting a shard at a row-parallel row's data offset, with that row in
    the middle (so its read is the one that fails, after writes were handed out), the shard and offset."""
    reader = PieceReader(ckpt)
    try:
        plans = [reader.plan(row, tp_mapping(row.megatron, gated_mlp=True), tp, range(tp)) for row in rows]
    finally:
        reader.close()
    failing = next(row for row, plan in zip(rows, plans, strict=True)
                   if plan is not None and is_row_parallel(plan.mapping))
    path, offset = ckpt.whole_source(failing.hf[0])

    def intact(row) -> bool:
        places = [ckpt.whole_source(h) for h in row.hf]
        return all(place is not None and (place[0] != path or place[1] + torch.Size(ckpt.shape(h)).numel()
                                          * ckpt.torch_dtype(h).itemsize <= offset)
                   for place, h in zip(places, row.hf, strict=True))

    kept = [row for row in rows if row is not failing and intact(row)]
    return [*kept[:len(kept) // 2], failing, *kept[len(kept) // 2:]], path, offset


def test_a_row_parallel_read_failing_mid_conversion_names_the_file_and_stops_every_writer(tiny_root, tmp_path):
    # Bugs caught: a failed read of a row-parallel row (read into the ring while the writer threads
    # still hold earlier and later rows) swallowed, so the rank files finish without its pieces or
    # the converter waits forever, and writer threads left running after the failure.
    source = tmp_path / "source"
    shutil.copytree(tiny_root["vit300m_qwen2_hf"], source)
    ckpt = HFCheckpoint(source)  # headers planned now; the shard shrinks afterwards
    rows = expand(table(ckpt.arch, padded_vocab=padded_vocab_size(ckpt.arch.language.vocab_size, 2)), ckpt.arch)
    rows, path, offset = _row_parallel_row_then_intact_rows(ckpt, rows, tp=2)
    assert len(rows) > 4  # rows handed out before and after the failing read
    os.truncate(path, offset)
    with pytest.raises(UserError, match=f"{path}: truncated"):
        write_rank_files(ckpt, rows, Layout(tp=2, pp=1), tmp_path / "out" / "iter_0000000")
    left = [t.name for t in threading.enumerate() if t.name.startswith(("sophia-read", "sophia-write"))]
    assert left == [], left
