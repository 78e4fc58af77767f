"""Plan how whole training samples are packed into fixed-size sequences (best-fit decreasing).

What: ``plan_packs`` takes per-sample token lengths (and optionally image-tile counts) and
returns a ``PackPlan``: which samples go into which pack, per-pack totals, the samples that
could not be packed (and why), and the packing efficiency. It is pure and deterministic: the
same inputs always give the same plan, so a resumed build writes identical shards.

Why: every pack is padded to ``max_tokens`` at training time, so padding is paid for in GPU
hours. Best-fit decreasing (BFD) leaves well under 1% padding on long-tailed reasoning data
(measured by ``sophia-profile packing``, see ``sophia_tools/bench/packing.py``).

How: samples are sorted by length (longest first) and each goes into the open pack with the
least remaining room that still fits it, under both caps. Lengths are integers bounded by
``max_tokens``, so open packs are bucketed by remaining capacity and a two-level bitmap over
capacities 0..max_tokens answers "smallest capacity >= L" with a handful of integer ops.
A run of identical samples is placed in one step: once a pack is the best fit for length L,
it stays the best fit until it is full (nothing else lies between L and its room), so the
loop runs once per (pack, distinct length) rather than once per sample. When tiles are capped,
open packs are also indexed per "tiles left" value, so a sample with images gets the tightest
pack that fits both caps exactly, at one query per non-empty tile level.

Layout of the result (CSR, cheap for millions of samples): pack ``p`` holds sample indices
``sample_order[pack_offsets[p]:pack_offsets[p + 1]]``, longest sample first. Packs are
ordered by total tokens, descending; ties keep the order in which the packs were opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

TOO_MANY_TOKENS = "too_many_tokens"
TOO_MANY_TILES = "too_many_tiles"

Oversize = Literal["drop", "truncate"]


@dataclass(frozen=True)
class PackPlan:
    """Where every sample goes. Indices refer to positions in the arrays given to ``plan_packs``."""

    pack_offsets: np.ndarray
    """int64 [packs + 1]: pack ``p`` is ``sample_order[pack_offsets[p]:pack_offsets[p + 1]]``."""
    sample_order: np.ndarray
    """int64 [packed samples]: sample indices grouped by pack, longest sample first within a pack."""
    pack_tokens: np.ndarray
    """int64 [packs]: tokens in each pack (truncated samples count as ``max_tokens``); descending."""
    pack_tiles: np.ndarray
    """int64 [packs]: image tiles in each pack (counted even when ``max_tiles`` is None)."""
    dropped: np.ndarray
    """int64: indices of samples left out, ascending."""
    dropped_reason: np.ndarray
    """str [len(dropped)]: ``too_many_tokens`` or ``too_many_tiles`` for each dropped sample."""
    truncated: np.ndarray
    """int64: indices of samples packed with their length cut to ``max_tokens`` (oversize="truncate")."""
    max_tokens: int
    max_tiles: int | None

    @property
    def num_packs(self) -> int:
        return len(self.pack_tokens)

    @property
    def packed_tokens(self) -> int:
        return int(self.pack_tokens.sum())

    @property
    def efficiency(self) -> float:
        """Real tokens / (packs x max_tokens): 1.0 means no padding; 0.0 when there are no packs."""
        return self.packed_tokens / (self.num_packs * self.max_tokens) if self.num_packs else 0.0

    def pack(self, p: int) -> np.ndarray:
        return self.sample_order[self.pack_offsets[p] : self.pack_offsets[p + 1]]

    @property
    def packs(self) -> list[np.ndarray]:
        """The packs as a list of index arrays (convenient for small plans; use the CSR pair at scale)."""
        return np.split(self.sample_order, self.pack_offsets[1:-1]) if self.num_packs else []

    def dropped_by_reason(self) -> dict[str, np.ndarray]:
        return {
            reason: self.dropped[self.dropped_reason == reason]
            for reason in (TOO_MANY_TOKENS, TOO_MANY_TILES)
        }


def lower_bound_packs(total_tokens: int, total_tiles: int, max_tokens: int, max_tiles: int | None) -> int:
    """No packing of these totals can use fewer packs than this (the volume bound on each cap)."""
    bound = -(-total_tokens // max_tokens)
    if max_tiles:
        bound = max(bound, -(-total_tiles // max_tiles))
    return bound


def plan_packs(
    tokens: np.ndarray,
    tiles: np.ndarray | None,
    max_tokens: int,
    max_tiles: int | None,
    oversize: Oversize = "drop",
) -> PackPlan:
    """Pack samples whole into packs of at most ``max_tokens`` tokens and ``max_tiles`` tiles.

    ``tokens``: per-sample token counts (>= 1, image tokens already expanded). ``tiles``: per-sample
    image tiles (>= 0) or None. ``max_tiles`` None means no tile cap. A sample over a cap is dropped
    (reason ``too_many_tokens`` / ``too_many_tiles``); with ``oversize="truncate"`` a sample that is
    too long is kept and counted as ``max_tokens`` tokens instead (tiles cannot be truncated, so a
    sample with too many tiles is still dropped). Every sample ends in exactly one pack or in
    ``dropped``.
    """
    tokens, tiles = _validated(tokens, tiles, max_tokens, max_tiles, oversize)
    max_tokens, max_tiles = int(max_tokens), None if max_tiles is None else int(max_tiles)
    too_long = tokens > max_tokens
    too_many_tiles = tiles > max_tiles if max_tiles is not None else np.zeros(len(tokens), dtype=bool)
    if oversize == "truncate":
        drop_reason_tokens = np.zeros_like(too_long)
        truncated = np.flatnonzero(too_long & ~too_many_tiles)
    else:
        drop_reason_tokens = too_long
        truncated = np.zeros(0, dtype=np.int64)
    dropped_mask = drop_reason_tokens | too_many_tiles
    dropped = np.flatnonzero(dropped_mask)
    dropped_reason = np.where(drop_reason_tokens[dropped], TOO_MANY_TOKENS, TOO_MANY_TILES).astype("<U15")

    kept = np.flatnonzero(~dropped_mask)
    kept_tokens = np.minimum(tokens[kept], max_tokens)
    kept_tiles = tiles[kept]
    capped_tiles = kept_tiles if max_tiles is not None else np.zeros_like(kept_tiles)
    # Longest first, more tiles first among equal lengths, then input order (stable sort).
    sort_key = kept_tokens * (int(capped_tiles.max(initial=0)) + 1) + capped_tiles
    by_size = np.argsort(-sort_key, kind="stable")
    sorted_ids, sorted_tokens = kept[by_size], kept_tokens[by_size]

    pack_of_sorted, num_packs = _best_fit_decreasing(
        sorted_tokens, capped_tiles[by_size], max_tokens, max_tiles
    )
    return _assemble(
        pack_of_sorted,
        num_packs,
        sorted_ids,
        sorted_tokens,
        kept_tiles[by_size],
        dropped=dropped,
        dropped_reason=dropped_reason,
        truncated=truncated,
        max_tokens=max_tokens,
        max_tiles=max_tiles,
    )


def _validated(tokens, tiles, max_tokens, max_tiles, oversize) -> tuple[np.ndarray, np.ndarray]:
    if oversize not in ("drop", "truncate"):
        raise ValueError(f"oversize must be 'drop' or 'truncate', not {oversize!r}")
    if int(max_tokens) < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if max_tiles is not None and int(max_tiles) < 0:
        raise ValueError(f"max_tiles must be >= 0, got {max_tiles}")
    tokens = _as_int_vector(tokens, "tokens")
    tiles = np.zeros(len(tokens), dtype=np.int64) if tiles is None else _as_int_vector(tiles, "tiles")
    if tiles.shape != tokens.shape:
        raise ValueError(f"tiles has {len(tiles)} entries but tokens has {len(tokens)}")
    if len(tokens) and tokens.min() < 1:
        raise ValueError(f"every sample needs >= 1 token; sample {int(np.argmin(tokens))} has {tokens.min()}")
    if len(tiles) and tiles.min() < 0:
        raise ValueError(f"tile counts must be >= 0; sample {int(np.argmin(tiles))} has {tiles.min()}")
    return tokens, tiles


def _as_int_vector(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


class _CapacityIndex:
    """Open packs bucketed by remaining token room, with "smallest room >= L" in a few int ops.

    Bit ``c`` of ``words[c >> 6]`` is set iff some pack has exactly ``c`` tokens of room left;
    bit ``w`` of ``summary`` is set iff ``words[w]`` is non-zero. A bucket is an insertion-ordered
    dict used as a set: the newest pack is taken first (deterministic) and any pack can be removed
    in O(1).
    """

    __slots__ = ("words", "summary", "packs_at")

    def __init__(self, max_room: int):
        self.words = [0] * (max_room // 64 + 1)
        self.summary = 0
        self.packs_at: dict[int, dict[int, None]] = {}

    def add(self, room: int, pack: int) -> None:
        bucket = self.packs_at.get(room)
        if bucket:
            bucket[pack] = None
            return
        self.packs_at[room] = {pack: None}
        word = room >> 6
        if not self.words[word]:
            self.summary |= 1 << word
        self.words[word] |= 1 << (room & 63)

    def smallest_room_at_least(self, need: int) -> int:
        """The least room >= ``need`` that some pack has, or -1."""
        word = need >> 6
        if word >= len(self.words):
            return -1
        bits = self.words[word] >> (need & 63)
        if bits:
            return need + (bits & -bits).bit_length() - 1
        higher = self.summary >> (word + 1)
        if not higher:
            return -1
        word += (higher & -higher).bit_length()
        bits = self.words[word]
        return (word << 6) + (bits & -bits).bit_length() - 1

    def take(self, room: int) -> int:
        """Remove and return the newest pack with exactly ``room`` tokens left."""
        pack = self.packs_at[room].popitem()[0]
        self._forget_if_empty(room)
        return pack

    def remove(self, room: int, pack: int) -> None:
        del self.packs_at[room][pack]
        self._forget_if_empty(room)

    def _forget_if_empty(self, room: int) -> None:
        if self.packs_at[room]:
            return
        del self.packs_at[room]
        word = room >> 6
        self.words[word] &= ~(1 << (room & 63))
        if not self.words[word]:
            self.summary &= ~(1 << word)


class _OpenPacks:
    """Packs that can still take samples, indexed by token room and, when tiles matter, by tiles left.

    ``by_room`` holds every open pack (samples without tiles need only token room). When tiles are
    capped, ``by_tiles_left[v]`` also holds the packs with exactly ``v`` tiles left, so a sample with
    ``t`` tiles finds its tightest feasible pack by one query per tile level ``v >= t``.
    """

    def __init__(self, max_tokens: int, max_tiles: int | None, shortest: int):
        self.max_tokens = max_tokens
        self.tile_cap = max_tiles or 0
        self.shortest = shortest
        self.by_room = _CapacityIndex(max_tokens)
        self.by_tiles_left = (
            None if max_tiles is None else [_CapacityIndex(max_tokens) for _ in range(max_tiles + 1)]
        )
        self.tiles_left: list[int] = []
        self.nonempty_levels = 0  # bit v set iff by_tiles_left[v] holds a pack

    def take_best(self, length: int, tile: int) -> tuple[int, int]:
        """Remove and return (pack, room) of the tightest open pack that fits, opening one if none does."""
        if tile:
            room, level = self._tightest_with_tiles(length, tile)
            if room >= 0:
                pack = self.by_tiles_left[level].take(room)
                self._note_if_level_empty(level)
                self.by_room.remove(room, pack)
                return pack, room
        else:
            room = self.by_room.smallest_room_at_least(length)
            if room >= 0:
                pack = self.by_room.take(room)
                if self.by_tiles_left is not None:
                    level = self.tiles_left[pack]
                    self.by_tiles_left[level].remove(room, pack)
                    self._note_if_level_empty(level)
                return pack, room
        self.tiles_left.append(self.tile_cap)
        return len(self.tiles_left) - 1, self.max_tokens

    def _tightest_with_tiles(self, length: int, tile: int) -> tuple[int, int]:
        best_room, best_level = -1, -1
        levels = self.nonempty_levels >> tile
        while levels:
            lowest = levels & -levels
            levels ^= lowest
            level = tile + lowest.bit_length() - 1
            room = self.by_tiles_left[level].smallest_room_at_least(length)
            if room >= 0 and (best_room < 0 or room < best_room):
                best_room, best_level = room, level
                if room == length:
                    break
        return best_room, best_level

    def put_back(self, pack: int, room: int) -> None:
        if room < self.shortest:
            return  # no remaining sample fits: the pack is closed
        self.by_room.add(room, pack)
        if self.by_tiles_left is not None:
            level = self.tiles_left[pack]
            self.by_tiles_left[level].add(room, pack)
            self.nonempty_levels |= 1 << level

    def _note_if_level_empty(self, level: int) -> None:
        if not self.by_tiles_left[level].summary:
            self.nonempty_levels &= ~(1 << level)


def _best_fit_decreasing(
    lengths: np.ndarray, tiles: np.ndarray, max_tokens: int, max_tiles: int | None
) -> tuple[np.ndarray, int]:
    """Assign each sample (already sorted longest first) a pack id; returns (pack per sample, packs)."""
    if not len(lengths):
        return np.zeros(0, dtype=np.int64), 0
    run_starts = np.flatnonzero(np.r_[True, (np.diff(lengths) != 0) | (np.diff(tiles) != 0)])
    run_ends = np.r_[run_starts[1:], len(lengths)]
    tiles_matter = max_tiles is not None and bool(tiles.any())
    open_packs = _OpenPacks(max_tokens, max_tiles if tiles_matter else None, int(lengths[-1]))
    tiles_left = open_packs.tiles_left
    segment_starts: list[int] = []
    segment_packs: list[int] = []
    for start, end, length, tile in zip(
        run_starts.tolist(), run_ends.tolist(), lengths[run_starts].tolist(), tiles[run_starts].tolist()
    ):
        while start < end:
            pack, room = open_packs.take_best(length, tile)
            # The pack stays the best fit for this length until it is full, so fill it in one step.
            count = min(end - start, room // length, tiles_left[pack] // tile if tile else end - start)
            segment_starts.append(start)
            segment_packs.append(pack)
            start += count
            tiles_left[pack] -= count * tile
            open_packs.put_back(pack, room - count * length)
    segment_sizes = np.diff(np.r_[segment_starts, len(lengths)])
    return np.repeat(np.asarray(segment_packs, dtype=np.int64), segment_sizes), len(tiles_left)


def _assemble(pack_of_sorted, num_packs, sorted_ids, sorted_tokens, sorted_tiles, **fields) -> PackPlan:
    """Order packs by total tokens (descending, ties by opening order) and lay them out as CSR."""
    pack_tokens = np.bincount(pack_of_sorted, weights=sorted_tokens, minlength=num_packs).astype(np.int64)
    pack_tiles = np.bincount(pack_of_sorted, weights=sorted_tiles, minlength=num_packs).astype(np.int64)
    pack_rank = np.argsort(-pack_tokens, kind="stable")
    rank_of_pack = np.empty(num_packs, dtype=np.int64)
    rank_of_pack[pack_rank] = np.arange(num_packs)
    ranked = rank_of_pack[pack_of_sorted]
    # Stable: samples keep their longest-first order within a pack.
    grouped = np.argsort(ranked, kind="stable")
    pack_offsets = np.zeros(num_packs + 1, dtype=np.int64)
    np.cumsum(np.bincount(ranked, minlength=num_packs), out=pack_offsets[1:])
    return PackPlan(
        pack_offsets=pack_offsets,
        sample_order=sorted_ids[grouped].astype(np.int64),
        pack_tokens=pack_tokens[pack_rank],
        pack_tiles=pack_tiles[pack_rank],
        **fields,
    )
