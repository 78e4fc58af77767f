"""Deterministic splitting of rollout inputs across SLURM array tasks (``--shard i/n``).

What: ``Shard.parse("3/8")`` is task 3 of 8 (0-based, ``0 <= i < n``); ``shard.owns(item_id)``
says whether that task processes an input id. Each id belongs to exactly one of the ``n``
shards, so the tasks of an array job are disjoint and together cover the whole input.

Why a hash of the id rather than row position: the split must not depend on the order of rows
in the input file, on which rows were rejected, or on Python's per-process ``hash()`` seed;
a restarted task must own exactly the ids it owned before, or the resumable store (store.py)
would see a different set of keys. blake2b of the UTF-8 id, taken modulo ``n``, is stable
across machines, Python versions and runs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from sophia_common.cli import UserError

_SHARD_PATTERN = re.compile(r"^\s*(-?\d+)\s*/\s*(-?\d+)\s*$")


def shard_of(item_id: str, count: int) -> int:
    """The shard (``0 <= s < count``) that owns ``item_id``; stable across runs and machines."""
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True)
class Shard:
    """Task ``index`` of ``count`` (0-based). ``Shard(0, 1)`` owns every id."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1:
            raise UserError(f"bad shard {self.index}/{self.count}: the shard count must be at least 1")
        if not 0 <= self.index < self.count:
            raise UserError(f"bad shard {self.index}/{self.count}: the index must be in 0..{self.count - 1} "
                            "(shards are numbered from 0)")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Parse ``"i/n"`` (as given to ``--shard``), e.g. ``"0/4"`` … ``"3/4"``."""
        match = _SHARD_PATTERN.match(text or "")
        if not match:
            raise UserError(f"bad --shard {text!r}: expected i/n with 0 <= i < n, e.g. 0/4")
        return cls(int(match.group(1)), int(match.group(2)))

    @property
    def tag(self) -> str:
        """A file-name-safe label, e.g. ``00003of00008``; used as the store's writer tag."""
        return f"{self.index:05d}of{self.count:05d}"

    def owns(self, item_id: str) -> bool:
        return self.count == 1 or shard_of(item_id, self.count) == self.index

    def select(self, ids: Iterable[str]) -> list[str]:
        """The ids this shard owns, in their given order."""
        return [item_id for item_id in ids if self.owns(item_id)]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def split_ids(ids: Iterable[str], count: int) -> list[list[str]]:
    """All ``count`` shards at once: ``result[s]`` holds the ids shard ``s`` owns, in input order."""
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    shards: list[list[str]] = [[] for _ in range(count)]
    for item_id in ids:
        shards[shard_of(item_id, count)].append(item_id)
    return shards
