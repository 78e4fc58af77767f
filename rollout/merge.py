"""Join the stores of SLURM array tasks into one (``sophia-rollout merge``), checked before anything is copied.

What: ``merge(sources, dest, expected_ids=...)`` hard-links (or copies) every shard of every table
of the source stores into ``dest``. Before copying it checks that no key is in two sources, that
each table was made under the same provenance everywhere (same models, prompts, settings), that
``dest`` holds nothing foreign, and, given the input ids, that every id is stored or rejected.

Why: array tasks may each write their own store (no shared writes across nodes); the merged store
must be exactly what one unsharded run would have written, or the merge must fail and say why.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rollout.provenance import provenance_changes
from rollout.store import (
    REJECTS,
    SHARD_PREFIX,
    SHARD_SUFFIX,
    TEMP_PREFIX,
    Store,
    StoreError,
    Table,
    _quote,
    _read_meta,
    _read_meta_file,
    _write_meta,
)
from sophia_common.atomic import fsync_path

_SHOWN = 5


@dataclass(frozen=True)
class MergeReport:
    """What ``merge`` put into the destination: keys and shards per table, rejects per reason."""

    rows: dict[str, int]
    shards: dict[str, int]
    reject_counts: dict[str, int]


def merge(sources: Sequence[str | Path], dest: str | Path, *, expected_ids: Iterable[str] | None = None,
          complete_tables: Sequence[str] | None = None) -> MergeReport:
    """Join the stores of array tasks into ``dest`` (shards are hard-linked, or copied across devices).

    Checks first, then copies, so a failed merge leaves ``dest`` as it was: no key may be in
    two sources; with ``expected_ids``, every id must have a row in each of ``complete_tables``
    (default: every table found but rejects) or be in the rejects table. Rerunning an
    interrupted merge into the same ``dest`` finishes it.
    """
    source_paths = [Path(source) for source in sources]
    dest = Path(dest)
    _check_sources(source_paths, dest)
    stores = [Store(path, writer="merge") for path in source_paths]
    names = sorted({name for store in stores for name in store.table_names()})
    opened: dict[str, list[tuple[Path, Table]]] = {}
    problems: list[str] = []
    for name in names:
        opened[name] = [(store.root, store.table(name)) for store in stores if name in store.table_names()]
        problems += _key_problems(name, opened[name])
        problems += _dest_problems(name, opened[name], dest / name)
    if expected_ids is not None and not problems:
        problems += _missing_id_problems(opened, set(expected_ids), complete_tables)
    if problems:
        raise StoreError("cannot merge " + ", ".join(map(str, source_paths)) + f" into {dest}:\n"
                         + "\n".join(problems))
    rows, shards = {}, {}
    for name, tables in opened.items():
        _write_meta(dest / name, name, tables[0][1].key_columns, tables[0][1].provenance)
        copied = [_link_shard(path, dest / name / path.name) for _, table in tables
                  for path in table.shard_paths()]
        fsync_path(dest / name)
        rows[name] = sum(len(table) for _, table in tables)
        shards[name] = len(copied)
    if names:
        fsync_path(dest)
    return MergeReport(rows=rows, shards=shards, reject_counts=Store(dest, writer="merge").reject_counts())


def _check_sources(sources: Sequence[Path], dest: Path) -> None:
    missing = [str(source) for source in sources if not source.is_dir()]
    if not sources or missing:
        raise StoreError(f"source store(s) {', '.join(missing)} do not exist" if missing else "no sources")
    resolved = [source.resolve() for source in sources]
    if len(set(resolved)) != len(sources) or dest.resolve() in resolved:
        raise StoreError(f"merge sources must be distinct stores other than the destination {dest}")


def _key_problems(name: str, tables: list[tuple[Path, Table]]) -> list[str]:
    key_columns = {table.key_columns for _, table in tables}
    if len(key_columns) > 1:
        return [f"table {name!r} has different key columns in different sources: {sorted(key_columns)}"]
    first_root, first = tables[0]
    for root, table in tables[1:]:
        changes = provenance_changes(first.provenance, table.provenance)
        if changes:
            return [f"table {name!r} was made under other settings in {root} than in {first_root}: "
                    + "; ".join(changes[:_SHOWN])]
    owner: dict[tuple, Path] = {}
    repeated: list[str] = []
    for root, table in tables:
        for key in table.existing_keys():
            if key in owner:
                repeated.append(f"{key!r} in {owner[key]} and {root}")
            else:
                owner[key] = root
    if not repeated:
        return []
    return [f"table {name!r}: {len(repeated)} key(s) in more than one source: "
            + "; ".join(sorted(repeated)[:_SHOWN])]


def _dest_problems(name: str, tables: list[tuple[Path, Table]], dest_dir: Path) -> list[str]:
    # Shard names embed a uuid, so two sources share one only by holding a copy of the same
    # shard, which the duplicate-key check already refuses.
    shard_names = {path.name for _, table in tables for path in table.shard_paths()}
    problems = []
    recorded = _read_meta(dest_dir)
    if recorded and recorded != tables[0][1].key_columns:
        problems.append(f"table {name!r}: {dest_dir} is keyed by {recorded}, the sources by "
                        f"{tables[0][1].key_columns}")
    meta = _read_meta_file(dest_dir)
    if meta is not None and "provenance" in meta:
        changes = provenance_changes(meta["provenance"], tables[0][1].provenance)
        if changes:
            problems.append(f"table {name!r}: {dest_dir} was made under other settings than the sources: "
                            + "; ".join(changes[:_SHOWN]))
    if dest_dir.is_dir():
        foreign = sorted({path.name for path in dest_dir.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}")}
                         - shard_names)
        if foreign:
            problems.append(f"table {name!r}: {dest_dir} already holds shards that are not from these "
                            f"sources: {_quote(foreign)}")
    return problems


def _missing_id_problems(opened: dict[str, list[tuple[Path, Table]]], expected: set[str],
                         complete_tables: Sequence[str] | None) -> list[str]:
    def ids_in(name: str) -> set[str]:
        found: set[str] = set()
        for _, table in opened.get(name, []):
            if "id" not in table.key_columns:
                raise StoreError(f"table {name!r} has no 'id' key column, so ids cannot be checked in it")
            position = table.key_columns.index("id")
            found |= {key[position] for key in table.existing_keys()}
        return found

    rejected = ids_in(REJECTS)
    check = list(complete_tables) if complete_tables is not None else [n for n in opened if n != REJECTS]
    problems = []
    for name in check or [REJECTS]:
        missing = sorted(expected - ids_in(name) - rejected)
        if missing:
            problems.append(f"table {name!r}: {len(missing)} expected id(s) neither stored nor rejected: "
                            f"{_quote(missing)}")
    return problems


def _link_shard(source: Path, target: Path) -> Path:
    """Put an immutable shard into ``target`` atomically; a shard already there (a resumed merge) is kept."""
    if target.exists():
        return target
    temp = target.with_name(f"{TEMP_PREFIX}merge-{uuid.uuid4().hex[:12]}{SHARD_SUFFIX}")
    try:
        os.link(source, temp)
    except OSError:
        shutil.copyfile(source, temp)
        with open(temp, "rb") as handle:
            os.fsync(handle.fileno())
    os.replace(temp, target)
    return target
