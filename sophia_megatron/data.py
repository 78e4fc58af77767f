"""Packed-dataset loader: THD micro-batches from the parquet packs of ``sophia-rollout pack``.

Order is a pure function of (seed, epoch, position): the packs of epoch ``e`` are visited in
``permutation(seed + e)``, global position ``g`` is pack ``perm[g % packs]`` of epoch
``g // packs``, and step ``s`` consumes positions ``[s*P, (s+1)*P)`` split evenly over the
data-parallel ranks. Resuming at step ``s`` therefore seeks straight to its packs (one
shard opened, no replay of earlier packs; InternVL's packed dataset replays from the start).

Each pack becomes one micro-batch (batch size 1, THD): token ids, next-token labels, a
per-token loss weight (the shifted assistant mask times the sample's reward weight; zero on
a sample's last token, so no loss crosses a sample boundary), position ids restarting per
sample, ``cu_seqlens``, and pixel tiles decoded from the stored image bytes at load time.
Packs are padded to a multiple of ``pad_to`` (sequence parallelism needs TP, FP8 needs 16);
the padding is one extra pseudo-sample with zero loss weight.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sophia_common.contract import ContractError, Manifest, check_compatible, read_manifest


@dataclass
class MicroBatch:
    tokens: Any            # [1, L] int64
    labels: Any            # [1, L] int64
    loss_weight: Any       # [1, L] float32 (0 where no loss)
    loss_tokens: int       # tokens with a loss (mask, before weighting)
    position_ids: Any      # [1, L] int64, restarting per sample
    cu_seqlens: Any        # [n + 1] int32, including the padding pseudo-sample
    pixel_values: Any      # [tiles, 3, S, S] float or None
    sample_ids: list[str]
    num_real_tokens: int


class PackedDataset:
    """Random access to the packs of one packed-dataset directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest: Manifest = read_manifest(self.directory)
        self._cached: tuple[str, Any] | None = None

    def __len__(self) -> int:
        return self.manifest.packs

    def check(self, *, tokenizer_fingerprint: str, max_seq_len: int) -> None:
        check_compatible(self.manifest, tokenizer_fingerprint=tokenizer_fingerprint, max_seq_len=max_seq_len,
                         where=str(self.directory))

    def _shard(self, name: str) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._cached is None or self._cached[0] != name:
            path = self.directory / name
            try:
                table = pq.read_table(path)
            except (OSError, pa.ArrowException) as exc:
                raise ContractError(f"{path}: cannot read packed shard ({exc})") from exc
            self._cached = (name, table)
        return self._cached[1]

    def pack(self, index: int) -> dict[str, Any]:
        name, row = self.manifest.shard_of(index)
        table = self._shard(name)
        if row >= table.num_rows:
            raise ContractError(f"{self.directory / name}: has {table.num_rows} packs, manifest expects row {row}")
        return {col: table.column(col)[row].as_py() for col in table.column_names}


def step_positions(step: int, packs_per_step: int, dp_rank: int, dp: int) -> range:
    """Global positions read by ``dp_rank`` at ``step`` (each rank gets a disjoint slice)."""
    if packs_per_step % dp:
        raise ValueError(f"packs per step ({packs_per_step}) must be a multiple of data parallelism ({dp})")
    per_rank = packs_per_step // dp
    start = step * packs_per_step + dp_rank * per_rank
    return range(start, start + per_rank)


@functools.lru_cache(maxsize=2)
def _epoch_order(num_packs: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(num_packs)


def pack_at(position: int, num_packs: int, seed: int) -> int:
    """The pack read at global ``position``: epoch ``e`` visits ``permutation(seed + e)``."""
    epoch, offset = divmod(position, num_packs)
    return int(_epoch_order(num_packs, seed + epoch)[offset])


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
        self.dataset, self.seed = dataset, seed
        self.packs_per_step, self.dp_rank, self.dp = packs_per_step, dp_rank, dp
        self.pad_to, self.load_pixels, self.pad_token_id = pad_to, load_pixels, pad_token_id

    def pack_indices(self, step: int) -> list[int]:
        positions = step_positions(step, self.packs_per_step, self.dp_rank, self.dp)
        return [pack_at(p, len(self.dataset), self.seed) for p in positions]

    def micro_batches(self, step: int) -> list[MicroBatch]:
        return [build_micro_batch(self.dataset.pack(i), pad_to=self.pad_to, load_pixels=self.load_pixels,
                                  pad_token_id=self.pad_token_id) for i in self.pack_indices(step)]
