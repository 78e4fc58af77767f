"""Write a packed dataset directory (docs/ALGORITHM.md §2, ``sophia_common.contract``) atomically.

What: ``write_dataset(out, manifest, plan, samples, excluded)`` turns a ``PackPlan`` over tokenised
samples into ``packs-NNNNN.parquet`` shards of ``pack_schema()`` rows (pack ``i`` is row
``i % packs_per_shard`` of shard ``i // packs_per_shard``, longest pack first), ``rejects.jsonl``
(one line per row or sample left out, with its reason) and ``manifest.json``.

Why this way: everything is written under ``OUT.tmp-<pid>``, fsynced and renamed into place, so a
reader never sees half a dataset and a crashed build leaves ``OUT`` as it was. Shards are written
``ROW_GROUP_PACKS`` packs at a time, so memory holds one row group (images included), not a shard.
Images are stored as the original encoded bytes; pixels are made at load time.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sophia_common.atomic import fsync_path, publish_dir, temp_dir_for
from sophia_common.cli import UserError
from sophia_common.contract import (
    MANIFEST_NAME,
    SHARD_PATTERN,
    TILE_FIELDS,
    Manifest,
    pack_schema,
    write_manifest,
)

if TYPE_CHECKING:
    from rollout.pack.planner import PackPlan
    from rollout.pack.samples import Sample

REJECTS_NAME = "rejects.jsonl"
ROW_GROUP_PACKS = 16


def check_replaceable(out: Path, force: bool) -> None:
    """Refuse an existing ``out`` unless ``force``; even then, only a packed dataset (or an empty dir)."""
    if not out.exists():
        return
    if not force:
        raise UserError(f"output {out} already exists; pass --force to replace it")
    if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).is_file()):
        raise UserError(f"output {out} exists and is not a packed dataset (no {MANIFEST_NAME}); "
                        f"refusing to replace it even with --force")


def write_dataset(out: Path, manifest: Manifest, plan: PackPlan, samples: Sequence[Sample],
                  excluded: list[dict[str, Any]], force: bool = False) -> None:
    """Write shards, rejects and ``manifest`` (its ``shards`` filled in here) to ``out``, atomically."""
    out = Path(out)
    tmp = temp_dir_for(out)
    try:
        manifest.shards = write_shards(tmp, plan, samples, manifest.packs_per_shard)
        _write_jsonl(tmp / REJECTS_NAME, excluded)
        write_manifest(tmp, manifest)
        fsync_path(tmp)
        _publish(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_shards(directory: Path, plan: PackPlan, samples: Sequence[Sample],
                 packs_per_shard: int) -> list[str]:
    """The packs of ``plan`` in its order, ``packs_per_shard`` per file; returns the shard file names."""
    import pyarrow.parquet as pq

    schema = pack_schema()
    names = []
    for shard, first in enumerate(range(0, plan.num_packs, packs_per_shard)):
        name = SHARD_PATTERN.format(shard)
        last = min(first + packs_per_shard, plan.num_packs)
        with pq.ParquetWriter(directory / name, schema, compression="zstd") as writer:
            for start in range(first, last, ROW_GROUP_PACKS):
                rows = [pack_row(p, [samples[i] for i in plan.pack(p)])
                        for p in range(start, min(start + ROW_GROUP_PACKS, last))]
                writer.write_table(_table(rows, schema))
        fsync_path(directory / name)
        names.append(name)
    return names


def pack_row(pack_id: int, members: Sequence[Sample]) -> dict[str, Any]:
    """One ``pack_schema()`` row: the members' ids, masks and images back to back."""
    lengths = [len(member.tokens) for member in members]
    plans = [plan for member in members for plan in member.tokens.tile_plans]
    return {
        "pack_id": pack_id,
        "num_tokens": sum(lengths),
        "num_tiles": sum(plan.num_tiles for plan in plans),
        "input_ids": np.concatenate([member.tokens.input_ids for member in members]),
        "loss_mask": np.concatenate([member.tokens.loss_mask() for member in members]),
        "position_ids": np.concatenate([np.arange(length, dtype=np.int32) for length in lengths]),
        "cu_seqlens": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32),
        "sample_weights": np.array([member.record.weight for member in members], dtype=np.float32),
        "sample_ids": [member.record.row.id for member in members],
        "sample_sources": [member.record.label for member in members],
        "images": [_encoded(image) for member in members for image in member.record.images],
        "image_tiles": [{name: getattr(plan, name) for name in TILE_FIELDS} for plan in plans],
    }


def _encoded(image: Path | bytes) -> bytes:
    if isinstance(image, bytes):
        return image
    try:
        return Path(image).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read image {image} while writing packs: {exc}") from exc


def _table(rows: list[dict[str, Any]], schema: Any) -> Any:
    import pyarrow as pa

    return pa.table({field.name: pa.array([row[field.name] for row in rows], type=field.type)
                     for field in schema}, schema=schema)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _publish(tmp: Path, out: Path, force: bool) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` (checked replaceable again) is replaced."""
    check_replaceable(out, force)
    try:
        publish_dir(tmp, out, replace=force)
    except OSError as exc:
        raise UserError(f"cannot move the new dataset into place at {out}: {exc}") from exc
