"""The resumable rollout store: content-keyed parquet shards, one directory per table (DESIGN §3.2).

What: ``Store(root)`` holds tables such as ``captions/`` (keyed by ``id, k``), ``trajectories/``
and ``scores/`` (``id, k, n``) and ``rejects/`` (``stage, id, k, n``). A table is a directory of
immutable parquet shards plus ``_table.json`` (its key columns). ``Table.write(rows)`` adds one
shard and refuses any key the table already holds; ``existing_keys()`` tells a restarted stage
what to skip; ``merge()`` joins the stores of SLURM array tasks into one, checking that no key
is duplicated and, given the input ids, that none is missing.

Why: rollout runs for days on preemptible nodes. A stage that writes one shard per batch and
skips stored keys on restart loses at most one batch to a crash and never computes or stores
a key twice. Crash safety comes from the write protocol, not from cleanup: a shard is written
to a hidden temporary name (``.tmp-…``) in the same directory, fsynced, then ``os.replace``-d
to ``part-<writer>-<seq>-<uuid>.parquet``; readers list only ``part-*.parquet``. So ``kill -9``
at any instant leaves either a complete shard or an ignored temp file, which the next open by
the same writer (or any open, once it is an hour old) deletes.

How a stage uses it::

    store = Store(out_dir / "store", writer=shard.tag)      # one writer tag per live process
    captions = store.table("captions")                       # keys (id, k)
    done = captions.existing_keys() | store.rejected_keys("caption", ("id", "k"))
    for batch in batches(key for key in wanted if key not in done):
        rows, rejects = caption_batch(batch)                 # rejects: reject_record(...) dicts
        store.write_rejects(rejects)
        captions.write(rows)

Concurrent writers may share a table only with disjoint keys and distinct writer tags (array
tasks writing into one store); otherwise give each task its own store and ``merge`` them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from sophia_common.cli import UserError

SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"
TEMP_PREFIX = ".tmp-"
TABLE_META = "_table.json"
STALE_TEMP_SECONDS = 3600
"""A temp file this old belongs to a dead writer (a shard write takes seconds), whoever wrote it."""

REJECTS = "rejects"
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "captions": ("id", "k"),
    "trajectories": ("id", "k", "n"),
    "scores": ("id", "k", "n"),
    REJECTS: ("stage", "id", "k", "n"),
}
"""Default key columns of the tables every rollout run has; other tables name theirs when opened."""

REJECT_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string()),
    pa.field("k", pa.int64()),
    pa.field("n", pa.int64()),
])

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.]+$")
_SHOWN = 5  # offending keys quoted in an error message


class StoreError(UserError):
    """The store cannot do what was asked (duplicate key, corrupt shard, bad merge); one line per problem."""


def reject_record(item_id: str, stage: str, reason: str, detail: str = "", k: int | None = None,
                  n: int | None = None) -> dict[str, Any]:
    """One row of the rejects table: an item that could not be processed, and why."""
    return {"id": item_id, "stage": stage, "reason": reason, "detail": detail, "k": k, "n": n}


def _quote(keys: Iterable[Any]) -> str:
    keys = list(keys)
    shown = ", ".join(repr(key) for key in keys[:_SHOWN])
    return shown + (f" … ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a rename is durable once its directory is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_meta(directory: Path) -> tuple[str, ...] | None:
    path = directory / TABLE_META
    if not path.is_file():
        return None
    try:
        return tuple(json.loads(path.read_text())["key_columns"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"unreadable table description {path}: {exc}") from exc


def _write_meta(directory: Path, name: str, key_columns: Sequence[str]) -> None:
    if (directory / TABLE_META).is_file():
        return
    directory.mkdir(parents=True, exist_ok=True)
    temp = directory / f"{TEMP_PREFIX}meta-{uuid.uuid4().hex[:12]}.json"
    temp.write_text(json.dumps({"table": name, "key_columns": list(key_columns), "format": 1}) + "\n")
    os.replace(temp, directory / TABLE_META)


class Table:
    """One table of a store: a directory of immutable, content-keyed parquet shards.

    Keys already on disk are scanned once (key columns only) and cached; every call that needs
    them rescans only shards that appeared since, so shards written by other processes count.
    """

    def __init__(self, directory: Path, name: str, key_columns: Sequence[str], writer: str,
                 schema: pa.Schema | None = None):
        """``schema``: fixed columns and types (the rejects table); else the first shard's are kept."""
        self.directory = Path(directory)
        self.name = name
        self.key_columns = tuple(key_columns)
        self._writer = writer
        self._schema = schema
        self._nullable_keys = {field.name for field in schema or () if field.nullable}
        self._key_shard: dict[tuple, str] = {}
        self._scanned: set[str] = set()
        self._seq = 0
        self._remove_dead_temp_files()

    def __repr__(self) -> str:
        return f"Table({self.name!r}, keys={self.key_columns}, dir={str(self.directory)!r})"

    def shard_paths(self) -> list[Path]:
        """Complete shards, sorted by name; temp files are never listed."""
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"{SHARD_PREFIX}*{SHARD_SUFFIX}"))

    def existing_keys(self) -> set[tuple]:
        """Every key stored in the table (tuples in ``key_columns`` order)."""
        self._refresh()
        return set(self._key_shard)

    def missing(self, keys: Iterable[Sequence[Any]]) -> list[tuple]:
        """The given keys that are not stored yet, in the given order."""
        wanted = [self._as_key(key) for key in keys]
        self._refresh()
        return [key for key in wanted if key not in self._key_shard]

    def __len__(self) -> int:
        self._refresh()
        return len(self._key_shard)

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """All rows of all complete shards (shard-name order), optionally only some columns."""
        tables = [self._read_shard(path, columns) for path in self.shard_paths()]
        if not tables:
            empty = self._schema.empty_table() if self._schema is not None else pa.table(
                {name: pa.array([], pa.null()) for name in self.key_columns})
            return empty.select(list(columns)) if columns else empty
        try:
            return pa.concat_tables(tables, promote_options="permissive")
        except pa.ArrowException as exc:
            raise StoreError(f"shards of table {self.name!r} in {self.directory} have incompatible "
                             f"schemas: {exc}") from exc

    def _read_shard(self, path: Path, columns: Sequence[str] | None) -> pa.Table:
        try:
            with pq.ParquetFile(path) as shard:
                absent = [name for name in (columns or ()) if name not in shard.schema_arrow.names]
                if absent:
                    raise StoreError(f"shard {path} has no column(s) {absent}")
                return shard.read(columns=list(columns) if columns else None)
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"corrupt or unreadable shard {path}: {exc}. Move it out of the table "
                             "directory and rerun the stage to recompute its rows") from exc

    def _refresh(self) -> None:
        for path in self.shard_paths():
            if path.name in self._scanned:
                continue
            keys = self._keys_of(self._read_shard(path, self.key_columns), f"shard {path}")
            clashes = [key for key in keys if key in self._key_shard]
            if clashes:
                raise StoreError(f"table {self.name!r}: shard {path.name} repeats keys stored in "
                                 f"{self._key_shard[clashes[0]]}: {_quote(clashes)}")
            self._key_shard.update(dict.fromkeys(keys, path.name))
            self._scanned.add(path.name)
            if self._schema is None:
                self._schema = pq.read_schema(path)

    def _as_key(self, key: Sequence[Any]) -> tuple:
        key = tuple(key) if isinstance(key, (tuple, list)) else (key,)
        if len(key) != len(self.key_columns):
            raise ValueError(f"table {self.name!r} keys are {self.key_columns}, got {key!r}")
        return key

    def _keys_of(self, table: pa.Table, origin: str) -> list[tuple]:
        for name in self.key_columns:
            if name not in table.column_names:
                raise StoreError(f"{origin}: key column {name!r} is missing (table {self.name!r})")
            if name not in self._nullable_keys and table.column(name).null_count:
                raise StoreError(f"{origin}: key column {name!r} has null values (table {self.name!r})")
        keys = list(zip(*(table.column(name).to_pylist() for name in self.key_columns)))
        repeated = [key for key, count in Counter(keys).items() if count > 1]
        if repeated:
            raise StoreError(f"{origin}: keys repeated within one write to table {self.name!r}: "
                             f"{_quote(repeated)}")
        return keys

    def write(self, rows: Sequence[Mapping[str, Any]] | pa.Table, *,
              skip_existing: bool = False) -> Path | None:
        """Store ``rows`` as one new shard, atomically; return its path (None when nothing is written).

        Raises ``StoreError`` when a key appears twice in ``rows`` or is already in the table;
        nothing is written then. ``skip_existing=True`` instead drops rows whose key is stored
        (for cheap, deterministic records such as input rejects that a rerun produces again).
        """
        table = self._to_arrow(rows)
        if table.num_rows == 0:
            return None
        keys = self._keys_of(table, f"write to table {self.name!r}")
        self._refresh()
        if skip_existing:
            is_new = [key not in self._key_shard for key in keys]
            table, keys = table.filter(pa.array(is_new)), [key for key, new in zip(keys, is_new) if new]
            if not keys:
                return None
        stored = [key for key in keys if key in self._key_shard]
        if stored:
            raise StoreError(f"table {self.name!r} already holds keys {_quote(stored)} "
                             f"(e.g. in {self._key_shard[stored[0]]}); a stage must skip existing_keys()")
        path = self._write_shard(table)
        self._key_shard.update(dict.fromkeys(keys, path.name))
        self._scanned.add(path.name)
        return path

    def _to_arrow(self, rows: Sequence[Mapping[str, Any]] | pa.Table) -> pa.Table:
        if isinstance(rows, pa.Table):
            table = rows
        else:
            rows = list(rows)
            names = list(dict.fromkeys(name for row in rows for name in row))
            try:
                table = pa.table({name: [row.get(name) for row in rows] for name in names})
            except pa.ArrowException as exc:
                raise StoreError(f"rows for table {self.name!r} do not form a table: {exc}") from exc
        if self._schema is None:
            self._refresh()
        if self._schema is None or table.num_rows == 0:
            return table
        return self._conform(table, self._schema)

    def _conform(self, table: pa.Table, schema: pa.Schema) -> pa.Table:
        extra = sorted(set(table.column_names) - set(schema.names))
        absent = sorted(set(schema.names) - set(table.column_names))
        if extra or absent:
            raise StoreError(f"rows for table {self.name!r} do not match its columns {schema.names}: "
                             f"unexpected {extra}, missing {absent}")
        try:
            return table.select(schema.names).cast(schema)
        except (pa.ArrowException, ValueError) as exc:
            raise StoreError(f"rows for table {self.name!r} do not match its column types: {exc}") from exc

    def _write_shard(self, table: pa.Table) -> Path:
        _write_meta(self.directory, self.name, self.key_columns)
        self._seq = max(self._seq, len(self._scanned))
        unique = uuid.uuid4().hex[:12]
        final = self.directory / f"{SHARD_PREFIX}{self._writer}-{self._seq:06d}-{unique}{SHARD_SUFFIX}"
        temp = self.directory / f"{TEMP_PREFIX}{self._writer}-{unique}{SHARD_SUFFIX}"
        try:
            with open(temp, "wb") as handle:
                pq.write_table(table, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        fsync_path(self.directory)
        self._seq += 1
        if self._schema is None:
            self._schema = table.schema
        return final

    def _remove_dead_temp_files(self) -> None:
        """Temp files of this writer are leftovers of a killed run; others' only once stale."""
        if not self.directory.is_dir():
            return
        own = f"{TEMP_PREFIX}{self._writer}-"
        for path in self.directory.glob(f"{TEMP_PREFIX}*"):
            try:
                if path.name.startswith(own) or time.time() - path.stat().st_mtime > STALE_TEMP_SECONDS:
                    path.unlink()
            except OSError:
                pass  # gone already, or a read-only store: readers ignore temp files anyway


class Store:
    """A directory of tables. ``writer`` names this process in shard names (e.g. ``Shard.tag``)."""

    def __init__(self, root: str | Path, writer: str = "main"):
        if not _NAME_PATTERN.match(writer):
            raise StoreError(f"bad store writer tag {writer!r}: use letters, digits, '_' and '.' only")
        self.root = Path(root)
        self.writer = writer
        self._tables: dict[str, Table] = {}

    def table(self, name: str, key_columns: Sequence[str] | None = None) -> Table:
        """Open (not create: the directory appears with the first write) the table ``name``.

        ``key_columns`` defaults to what the table recorded on disk, else ``KEY_COLUMNS[name]``;
        asking for keys that differ from the recorded ones is an error.
        """
        if not _NAME_PATTERN.match(name):
            raise StoreError(f"bad table name {name!r}: use letters, digits, '_' and '.' only")
        recorded = _read_meta(self.root / name)
        keys = tuple(key_columns) if key_columns else (recorded or KEY_COLUMNS.get(name))
        if not keys:
            raise StoreError(f"table {name!r} is new and has no default key columns; pass key_columns")
        if recorded and recorded != keys:
            raise StoreError(f"table {name!r} in {self.root} is keyed by {recorded}, not {keys}")
        if name not in self._tables:
            self._tables[name] = Table(self.root / name, name, keys, self.writer,
                                       schema=REJECT_SCHEMA if name == REJECTS else None)
        elif self._tables[name].key_columns != keys:
            raise StoreError(f"table {name!r} is open with keys {self._tables[name].key_columns}, not {keys}")
        return self._tables[name]

    def table_names(self) -> list[str]:
        """Tables that exist on disk (their description is written before their first shard)."""
        if not self.root.is_dir():
            return []
        return sorted(path.parent.name for path in self.root.glob(f"*/{TABLE_META}"))

    @property
    def rejects(self) -> Table:
        return self.table(REJECTS)

    def write_rejects(self, records: Sequence[Mapping[str, Any]], *,
                      skip_existing: bool = False) -> Path | None:
        """Store ``reject_record`` dicts as one shard of the rejects table (see ``Table.write``)."""
        return self.rejects.write(records, skip_existing=skip_existing)

    def reject_counts(self, stage: str | None = None) -> dict[str, int]:
        """Number of rejected items per reason (of one stage, or of all), most frequent first."""
        table = self.rejects.read(["stage", "reason"]).to_pydict()
        counts = Counter(reason for row_stage, reason in zip(table["stage"], table["reason"])
                         if stage is None or row_stage == stage)
        return dict(counts.most_common())

    def rejected_keys(self, stage: str, key_columns: Sequence[str] = ("id",)) -> set[tuple]:
        """Keys (``key_columns`` of the rejects table) that ``stage`` rejected: skip them on restart."""
        table = self.rejects.read(["stage", *key_columns]).to_pydict()
        return {tuple(table[name][row] for name in key_columns)
                for row, row_stage in enumerate(table["stage"]) if row_stage == stage}


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
        _write_meta(dest / name, name, tables[0][1].key_columns)
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
