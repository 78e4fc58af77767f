"""``sophia-profile loader``: bytes read per micro-batch and micro-batches/s of the training loader.

Why: a loader that decompresses a whole shard to use one pack of it makes every rank read
~1000x the data it trains on at the recipes' ``packs_per_shard: 1024``. This benchmark writes a
synthetic packed dataset with recipe-sized shards (the writer's row groups, random token ids,
one encoded image per pack), then streams the micro-batches of one data-parallel rank through

- ``loader``: ``sophia_megatron.data`` (reads the row group holding each pack, block shuffle);
- ``baseline``: the previous loader, measured in the same run (whole-shard reads, the last shard
  cached, packs visited in a uniform permutation with positions split per step).

It reports, for each, ``read_amplification`` = bytes read / bytes of the packs used (both in
compressed on-disk bytes: a pack's share is its row group's bytes / its rows), bytes read per
micro-batch, the OS-level read count (``/proc/self/io`` rchar) as a cross-check, and
micro-batches/s (pixels decoded, as in training).

    sophia-profile loader [--packs 2048 --packs-per-shard 1024 --seq 4096 --dp 8 --packs-per-step 8 --steps 32]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from sophia_common.cli import run_guarded


def _image_bytes(rng: np.random.Generator, size: int) -> bytes:
    from PIL import Image

    pixels = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def synthetic_pack(index: int, seq: int, samples: int, image: bytes | None, rng: np.random.Generator) -> dict:
    lengths = np.full(samples, seq // samples)
    lengths[-1] += seq - lengths.sum()
    tile = {"width": 448, "height": 448, "cols": 1, "rows": 1, "image_size": 448, "thumbnail": False}
    return {"pack_id": index, "num_tokens": seq, "num_tiles": 1 if image else 0,
            "input_ids": rng.integers(0, 150000, seq, dtype=np.int32), "loss_mask": np.ones(seq, dtype=np.int8),
            "position_ids": np.concatenate([np.arange(n, dtype=np.int32) for n in lengths]),
            "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
            "sample_weights": np.ones(samples, dtype=np.float32),
            "sample_ids": [f"p{index}s{i}" for i in range(samples)], "sample_sources": ["synthetic"] * samples,
            "images": [image] if image else [], "image_tiles": [tile] if image else []}


def write_synthetic(directory: Path, *, packs: int, packs_per_shard: int, seq: int, samples: int = 4,
                    images: bool = True, seed: int = 0) -> Path:
    """A packed dataset as ``sophia-rollout pack`` writes it (same schema, row groups, manifest)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rollout.pack.write import ROW_GROUP_PACKS
    from sophia_common.contract import SCHEMA_VERSION, SHARD_PATTERN, Manifest, pack_schema, write_manifest

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    schema, shards = pack_schema(), []
    pictures = [_image_bytes(rng, 448) for _ in range(8)] if images else [None]
    for shard, first in enumerate(range(0, packs, packs_per_shard)):
        name = SHARD_PATTERN.format(shard)
        last = min(first + packs_per_shard, packs)
        with pq.ParquetWriter(directory / name, schema, compression="zstd") as writer:
            for start in range(first, last, ROW_GROUP_PACKS):
                rows = [synthetic_pack(p, seq, samples, pictures[p % len(pictures)], rng)
                        for p in range(start, min(start + ROW_GROUP_PACKS, last))]
                writer.write_table(pa.table({f.name: pa.array([r[f.name] for r in rows], type=f.type)
                                             for f in schema}, schema=schema))
        shards.append(name)
    write_manifest(directory, Manifest(
        schema_version=SCHEMA_VERSION, tokenizer_fingerprint="synthetic", max_seq_len=seq, max_tiles_per_pack=1,
        tokens_per_tile=256, image_size=448, packs=packs, packs_per_shard=packs_per_shard, shards=shards,
        stats={"samples_per_pack_mean": samples}))
    return directory


def pack_shares(directory: Path) -> dict[tuple[str, int], float]:
    """(shard, row) -> compressed bytes of that pack's share of its row group."""
    import pyarrow.parquet as pq

    from sophia_common.contract import read_manifest

    shares = {}
    for name in read_manifest(directory).shards:
        meta, row = pq.ParquetFile(directory / name).metadata, 0
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            size = sum(group.column(c).total_compressed_size for c in range(group.num_columns))
            for _ in range(group.num_rows):
                shares[(name, row)] = size / group.num_rows
                row += 1
    return shares


def _rchar() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class WholeShardBaseline:
    """The previous loader: ``pq.read_table`` of the whole shard, the last one cached, uniform order."""

    def __init__(self, directory: Path, seed: int, packs_per_step: int, dp_rank: int, dp: int) -> None:
        from sophia_common.contract import read_manifest

        self.directory, self.manifest = directory, read_manifest(directory)
        self.order = np.random.default_rng(seed).permutation(self.manifest.packs)
        self.per_rank, self.start = packs_per_step // dp, dp_rank * (packs_per_step // dp)
        self.packs_per_step = packs_per_step
        self.cached: tuple[str, Any] | None = None
        self.bytes_read = 0

    def packs(self, step: int) -> list[tuple[str, int, dict]]:
        import pyarrow.parquet as pq

        out = []
        for position in range(step * self.packs_per_step + self.start,
                              step * self.packs_per_step + self.start + self.per_rank):
            name, row = self.manifest.shard_of(int(self.order[position % self.manifest.packs]))
            if self.cached is None or self.cached[0] != name:
                self.cached = (name, pq.read_table(self.directory / name))
                self.bytes_read += (self.directory / name).stat().st_size
            table = self.cached[1]
            out.append((name, row, {c: table.column(c)[row].as_py() for c in table.column_names}))
        return out


def measure(directory: Path, args: argparse.Namespace, kind: str) -> dict[str, Any]:
    from sophia_megatron.data import PackedDataset, PackStream, build_micro_batch

    shares = pack_shares(directory)
    rchar, started, used, batches = _rchar(), time.perf_counter(), 0.0, 0
    if kind == "loader":
        dataset = PackedDataset(directory)
        stream = PackStream(dataset, seed=0, packs_per_step=args.packs_per_step, dp_rank=0, dp=args.dp)
        for step in range(args.steps):
            batches += len(stream.micro_batches(step))
        used, read = dataset.packs_bytes, dataset.bytes_read
    else:
        baseline = WholeShardBaseline(directory, 0, args.packs_per_step, 0, args.dp)
        for step in range(args.steps):
            for name, row, pack in baseline.packs(step):
                build_micro_batch(pack)
                used += shares[(name, row)]
                batches += 1
        read = baseline.bytes_read
    seconds = time.perf_counter() - started
    os_read = None if rchar is None else _rchar() - rchar
    return {"loader": kind, "micro_batches": batches, "seconds": round(seconds, 3),
            "micro_batches_per_s": round(batches / seconds, 2), "bytes_read": read, "bytes_of_packs_used": round(used),
            "read_amplification": round(read / used, 3), "bytes_read_per_micro_batch": round(read / batches),
            "os_bytes_read": os_read}


def _warm_up(directory: Path) -> None:
    """Import torch and the image stack and decode one pack, so neither run pays for them."""
    from sophia_megatron.data import PackedDataset, build_micro_batch

    build_micro_batch(PackedDataset(directory).pack(0))


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sophia-profile loader", description=__doc__.splitlines()[0])
    parser.add_argument("--packs", type=int, default=2048, help="packs in the synthetic dataset")
    parser.add_argument("--packs-per-shard", type=int, default=1024, help="packs per shard (the recipes use 1024)")
    parser.add_argument("--seq", type=int, default=4096, help="tokens per pack")
    parser.add_argument("--no-images", action="store_true", help="packs without images")
    parser.add_argument("--dp", type=int, default=8, help="data-parallel ranks (rank 0 is measured)")
    parser.add_argument("--packs-per-step", type=int, default=8, help="packs per optimizer step, all ranks")
    parser.add_argument("--steps", type=int, default=32, help="optimizer steps streamed")
    parser.add_argument("--data", default=None, help="reuse (or keep) the synthetic dataset in this directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(args.data) if args.data else Path(tmp) / "packed"
        if not (directory / "manifest.json").is_file():
            write_synthetic(directory, packs=args.packs, packs_per_shard=args.packs_per_shard, seq=args.seq,
                            images=not args.no_images)
        _warm_up(directory)
        runs = [measure(directory, args, kind) for kind in ("loader", "baseline")]
    report = {"benchmark": "loader", "packs": args.packs, "packs_per_shard": args.packs_per_shard,
              "seq": args.seq, "dp": args.dp, "packs_per_step": args.packs_per_step, "steps": args.steps,
              "runs": runs, "bytes_read_vs_baseline": round(runs[0]["bytes_read"] / runs[1]["bytes_read"], 5),
              "speedup_vs_baseline": round(runs[0]["micro_batches_per_s"] / runs[1]["micro_batches_per_s"], 2)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(run_guarded(main))
