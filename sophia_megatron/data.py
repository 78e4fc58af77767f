"""Packed-dataset loader: THD micro-batches from the parquet packs of ``sophia-rollout pack``.

Reads stay local. The writer stores packs in row groups of a few packs (16), and the loader
reads only the row group that holds a pack (never a whole shard), keeping the few it is using.
The order is shuffled at the same granularity: epoch ``e`` visits the row-group blocks in
``permutation(seed + e)`` (full blocks first, the few short ones at the end), and the packs of
each block in a permutation seeded by ``(seed + e, block)``. Global position ``g`` is offset
``g % packs`` of epoch ``g // packs``, so the order is a pure function of (seed, epoch, position).

A step of ``P`` packs reads ``P`` lanes: for ``B`` packs per block, steps ``kB .. kB+B-1`` read
positions ``kPB + lane*B + i`` (step ``kB+i``, lane ``0..P-1``), so each lane walks one block
per ``B`` steps, and data-parallel rank ``r`` of ``dp`` takes lanes ``r*P/dp .. (r+1)*P/dp - 1``.
Hence the packs of a step do not depend on the data-parallel size (DP=1 and DP=8 runs see
the same global batches), ranks are disjoint, every rank reads each row group once and uses
all of it (bytes read / bytes used ~ 1, holding ``P/dp`` row groups), and resuming at step
``s`` computes its positions directly (no replay of earlier packs).

Each pack becomes one micro-batch (batch size 1, THD): token ids, next-token labels, a
per-token loss weight (the shifted assistant mask times the sample's reward weight; zero on
a sample's last token, so no loss crosses a sample boundary), position ids restarting per
sample, ``cu_seqlens``, and pixel tiles decoded from the stored image bytes at load time.
Packs are padded to a multiple of ``pad_to`` (sequence parallelism needs TP, FP8 needs 16);
the padding is one extra pseudo-sample with zero loss weight.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sophia_common.contract import ContractError, Manifest, check_compatible, read_manifest

MAX_OPEN_SHARDS = 8


@dataclass
class MicroBatch:
    tokens: Any            # [1, L] int64
    labels: Any            # [1, L] int64
    loss_weight: Any       # [1, L] float32: loss_mask times the sample's reward weight
    loss_mask: Any         # [1, L] float32: 1 where a token is predicted (assistant, same sample)
    loss_tokens: int       # tokens with a loss (mask, before weighting)
    position_ids: Any      # [1, L] int64, restarting per sample
    cu_seqlens: Any        # [n + 1] int32, including the padding pseudo-sample
    pixel_values: Any      # [tiles, 3, S, S] float or None
    sample_ids: list[str]
    num_real_tokens: int


class PackedDataset:
    """Random access to the packs of one packed-dataset directory, read a row group at a time.

    The last ``keep_row_groups`` row groups read stay in memory (a stream sets one per lane).

    ``bytes_read`` counts what the reads cost on disk: the compressed column chunks of every
    row group read plus each shard's footer; ``packs_bytes`` the compressed share of each pack
    returned (its row group's bytes / its rows), so their ratio is the read amplification.
    """

    def __init__(self, directory: str | Path, keep_row_groups: int = 1) -> None:
        self.directory = Path(directory)
        self.manifest: Manifest = read_manifest(self.directory)
        self.keep_row_groups = keep_row_groups
        self._files: dict[str, tuple[Any, list[int]]] = {}
        self._groups: dict[tuple[str, int], Any] = {}  # the row groups in use, least recent first
        self.bytes_read = 0
        self.packs_bytes = 0.0
        self.row_groups_read = 0

    def __len__(self) -> int:
        return self.manifest.packs

    def check(self, *, tokenizer_fingerprint: str, max_seq_len: int) -> None:
        check_compatible(self.manifest, tokenizer_fingerprint=tokenizer_fingerprint, max_seq_len=max_seq_len,
                         where=str(self.directory))

    def _file(self, name: str) -> tuple[Any, list[int]]:
        """(open ParquetFile, first row of each row group) of one shard; footers are read once."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if name not in self._files:
            path = self.directory / name
            try:
                parquet = pq.ParquetFile(path)
            except (OSError, pa.ArrowException) as exc:
                raise ContractError(f"{path}: cannot read packed shard ({exc})") from exc
            meta = parquet.metadata
            self.bytes_read += meta.serialized_size
            starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]).tolist()
            if len(self._files) >= MAX_OPEN_SHARDS:
                self._files.pop(next(iter(self._files)))
            self._files[name] = (parquet, starts)
        return self._files[name]

    def block_size(self) -> int:
        """Packs per row group (the writer's; the first shard's first row group tells)."""
        if not self.manifest.shards or not self.manifest.packs:
            raise ContractError(f"{self.directory}: the dataset holds no packs")
        _, starts = self._file(self.manifest.shards[0])
        return max(1, starts[1] if len(starts) > 1 else 1)

    def _row(self, name: str, row: int) -> tuple[Any, int, float]:
        """(row-group table, row within it, compressed bytes per row of that group)."""
        import pyarrow as pa

        parquet, starts = self._file(name)
        if row >= starts[-1]:
            raise ContractError(f"{self.directory / name}: has {starts[-1]} packs, manifest expects row {row}")
        group = bisect.bisect_right(starts, row) - 1
        meta = parquet.metadata.row_group(group)
        size = sum(meta.column(c).total_compressed_size for c in range(meta.num_columns))
        key = (name, group)
        if key not in self._groups:
            try:
                self._groups[key] = parquet.read_row_group(group)
            except (OSError, pa.ArrowException) as exc:
                raise ContractError(f"{self.directory / name}: cannot read row group {group} ({exc})") from exc
            self.bytes_read += size
            self.row_groups_read += 1
            while len(self._groups) > max(1, self.keep_row_groups):
                self._groups.pop(next(iter(self._groups)))
        self._groups[key] = self._groups.pop(key)  # most recently used last
        return self._groups[key], row - starts[group], size / meta.num_rows

    def pack(self, index: int) -> dict[str, Any]:
        name, row = self.manifest.shard_of(index)
        table, local, share = self._row(name, row)
        self.packs_bytes += share
        return {col: table.column(col)[local].as_py() for col in table.column_names}


@dataclass(frozen=True)
class PackOrder:
    """The shuffled visiting order of a dataset's packs, in row-group blocks (see the module doc)."""

    num_packs: int
    packs_per_shard: int
    block: int
    seed: int

    @classmethod
    def of(cls, dataset: PackedDataset, seed: int) -> PackOrder:
        return cls(len(dataset), dataset.manifest.packs_per_shard, dataset.block_size(), seed)

    def blocks(self) -> list[tuple[int, int]]:
        """(first pack, size) of every block: the row groups, which restart at each shard."""
        out = []
        for shard_start in range(0, self.num_packs, self.packs_per_shard):
            shard_end = min(shard_start + self.packs_per_shard, self.num_packs)
            out += [(b, min(self.block, shard_end - b)) for b in range(shard_start, shard_end, self.block)]
        return out

    def pack_at(self, position: int) -> int:
        """The pack read at global ``position``."""
        epoch, offset = divmod(position, self.num_packs)
        firsts, sizes, ids, ends = _epoch_blocks(self, epoch)
        slot = bisect.bisect_right(ends, offset)
        within = offset - (ends[slot - 1] if slot else 0)
        inner = np.random.default_rng((self.seed + epoch, ids[slot])).permutation(sizes[slot])
        return int(firsts[slot] + inner[within])


@functools.lru_cache(maxsize=4)
def _epoch_blocks(order: PackOrder, epoch: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """The blocks of one epoch in visiting order: firsts, sizes, block ids, cumulative ends."""
    blocks = order.blocks()
    full = [i for i, (_, size) in enumerate(blocks) if size == order.block]
    short = [i for i, (_, size) in enumerate(blocks) if size != order.block]
    rng = np.random.default_rng(order.seed + epoch)
    ids = [full[i] for i in rng.permutation(len(full))] + [short[i] for i in rng.permutation(len(short))]
    sizes = [blocks[i][1] for i in ids]
    return [blocks[i][0] for i in ids], sizes, ids, np.cumsum(sizes).tolist()


def step_positions(step: int, packs_per_step: int, dp_rank: int, dp: int, block: int = 1) -> list[int]:
    """Global positions read by ``dp_rank`` at ``step`` (lanes of ``block`` positions; see the module doc)."""
    if packs_per_step % dp:
        raise ValueError(f"packs per step ({packs_per_step}) must be a multiple of data parallelism ({dp})")
    per_rank = packs_per_step // dp
    round_, inner = divmod(step, block)
    base = round_ * packs_per_step * block + inner
    return [base + lane * block for lane in range(dp_rank * per_rank, (dp_rank + 1) * per_rank)]


def build_micro_batch(pack: dict[str, Any], *, pad_to: int = 1, load_pixels: bool = True,
                      pad_token_id: int = 0) -> MicroBatch:
    import torch

    ids = np.asarray(pack["input_ids"], dtype=np.int64)
    mask = np.asarray(pack["loss_mask"], dtype=np.float32)
    cu = np.asarray(pack["cu_seqlens"], dtype=np.int64)
    weights = np.asarray(pack["sample_weights"], dtype=np.float32)
    n = len(ids)
    labels = np.zeros(n, dtype=np.int64)
    labels[:-1] = ids[1:]
    target = np.zeros(n, dtype=np.float32)
    target[:-1] = mask[1:]
    sample_of = np.repeat(np.arange(len(weights)), np.diff(cu))
    target[cu[1:] - 1] = 0.0  # a sample's last token predicts nothing inside the pack
    loss_weight = target * weights[sample_of]
    loss_tokens = int(target.sum())
    positions = np.asarray(pack["position_ids"], dtype=np.int64)
    padded = -(-n // pad_to) * pad_to
    if padded > n:
        extra = padded - n
        ids = np.concatenate([ids, np.full(extra, pad_token_id)])
        labels = np.concatenate([labels, np.zeros(extra, dtype=np.int64)])
        loss_weight = np.concatenate([loss_weight, np.zeros(extra, dtype=np.float32)])
        positions = np.concatenate([positions, np.arange(extra)])
        cu = np.concatenate([cu, [padded]])
    pixels = load_pack_pixels(pack) if load_pixels else None
    as_row = lambda a: torch.from_numpy(np.ascontiguousarray(a)).unsqueeze(0)  # noqa: E731
    return MicroBatch(tokens=as_row(ids), labels=as_row(labels), loss_weight=as_row(loss_weight),
                      loss_mask=as_row(np.concatenate([target, np.zeros(len(ids) - n, dtype=np.float32)])),
                      loss_tokens=loss_tokens, position_ids=as_row(positions),
                      cu_seqlens=torch.from_numpy(cu.astype(np.int32)), pixel_values=pixels,
                      sample_ids=list(pack["sample_ids"]), num_real_tokens=n)


def load_pack_pixels(pack: dict[str, Any]) -> Any:
    import torch

    from sophia_common.images import TilePlan, load_tiles

    if not pack["images"]:
        return None
    tiles = [load_tiles(data, TilePlan(**plan)) for data, plan in zip(pack["images"], pack["image_tiles"])]
    return torch.from_numpy(np.concatenate(tiles))


class PackStream:
    """The micro-batches of one data-parallel rank, from any step on."""

    def __init__(self, dataset: PackedDataset, *, seed: int, packs_per_step: int, dp_rank: int, dp: int,
                 pad_to: int = 1, load_pixels: bool = True, pad_token_id: int = 0) -> None:
        self.dataset, self.order = dataset, PackOrder.of(dataset, seed)
        dataset.keep_row_groups = max(dataset.keep_row_groups, packs_per_step // dp)  # one per lane
        self.packs_per_step, self.dp_rank, self.dp = packs_per_step, dp_rank, dp
        self.pad_to, self.load_pixels, self.pad_token_id = pad_to, load_pixels, pad_token_id

    def pack_indices(self, step: int) -> list[int]:
        positions = step_positions(step, self.packs_per_step, self.dp_rank, self.dp, self.order.block)
        return [self.order.pack_at(p) for p in positions]

    def micro_batches(self, step: int) -> list[MicroBatch]:
        return [build_micro_batch(self.dataset.pack(i), pad_to=self.pad_to, load_pixels=self.load_pixels,
                                  pad_token_id=self.pad_token_id) for i in self.pack_indices(step)]
