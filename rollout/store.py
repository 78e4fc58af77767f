"""The resumable rollout store: content-keyed parquet shards, one directory per table (docs/ALGORITHM.md §2).

What: ``Store(root)`` holds tables such as ``captions/`` (keyed by ``id, k``), ``trajectories/``
and ``scores/`` (``id, k, n``) and ``rejects/`` (``stage, id, k, n``). A table is a directory of
immutable parquet shards plus ``_table.json`` (its key columns). ``Table.write(rows)`` adds one
shard and refuses any key the table already holds; ``existing_keys()`` tells a restarted stage
what to skip; ``rollout.merge`` joins the stores of SLURM array tasks into one.

Why: rollout runs for days on preemptible nodes. A stage that writes one shard per batch and
skips stored keys on restart loses at most one batch to a crash and never computes or stores
a key twice. Crash safety comes from the write protocol, not from cleanup: a shard is written
to a hidden temporary name (``.part-….parquet.tmp-<pid>``, ``sophia_common.atomic``) in the same
directory, fsynced, then renamed to ``part-<writer>-<seq>-<uuid>.parquet``; readers list only
``part-*.parquet``. So ``kill -9`` at any instant leaves either a complete shard or an ignored
temp file, which the next open by the same writer (or any open, once it is an hour old) deletes.

Provenance: ``_table.json`` also records what made a table's rows (the model and a fingerprint
of its weights, the prompt, the sampling settings, K, N, the upstream table's provenance; see
``rollout.provenance``). ``Store.check_provenance`` refuses to add to (or read from) a table made
under other settings, with one line per setting that changed, so a rerun with another model
never reuses the old model's rows as its own.

Rejects: the rejects table is keyed (stage, id, k, n, input_hash, reason). ``input_hash`` is the
content hash of the input row (``rollout.inputs``), so a fixed row is examined again; transient
failures (``TRANSIENT_REASONS``: engine errors, timeouts) are recorded but never skipped, so the
next run retries them (a retry that fails for good adds its own row, with its own reason).

How a stage uses it::

    store = Store(out_dir / "store", writer=shard.tag)      # one writer tag per live process
    captions = store.table("captions")                       # keys (id, k)
    done = captions.existing_keys() | store.rejected_keys("caption", ("id", "k"), hashes)
    for batch in batches(key for key in wanted if key not in done):
        rows, rejects = caption_batch(batch)                 # rejects: reject_record(...) dicts
        store.write_rejects(rejects)
        captions.write(rows)

Concurrent writers may share a table only with disjoint keys and distinct writer tags (array
tasks writing into one store); otherwise give each task its own store and merge them (``rollout.merge``).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rollout.provenance import provenance_changes
from sophia_common.atomic import TEMP_MARK, atomic_path, write_text_atomic
from sophia_common.cli import UserError

SHARD_PREFIX = "part-"
SHARD_SUFFIX = ".parquet"
TEMP_PREFIX = "." + SHARD_PREFIX
"""Temporaries are ``.part-<writer>-….parquet.tmp-<pid>`` (``sophia_common.atomic.atomic_path``)."""
TABLE_META = "_table.json"
STALE_TEMP_SECONDS = 3600
"""A temp file this old belongs to a dead writer (a shard write takes seconds), whoever wrote it."""

REJECTS = "rejects"
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "captions": ("id", "k"),
    "trajectories": ("id", "k", "n"),
    "scores": ("id", "k", "n"),
    REJECTS: ("stage", "id", "k", "n", "input_hash", "reason"),
}
"""Default key columns of the tables every rollout run has; other tables name theirs when opened."""

REJECT_SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("detail", pa.string()),
    pa.field("k", pa.int64()),
    pa.field("n", pa.int64()),
    pa.field("input_hash", pa.string(), nullable=False),
])
TRANSIENT_REASONS = frozenset({"engine_error", "timeout"})
"""Reject reasons that say nothing about the row: stored and counted, but retried by the next run."""

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.]+$")
_SHOWN = 5  # offending keys quoted in an error message


class StoreError(UserError):
    """The store cannot do what was asked (duplicate key, corrupt shard, bad merge); one line per problem."""


def reject_record(item_id: str, stage: str, reason: str, detail: str = "", k: int | None = None,
                  n: int | None = None, input_hash: str = "") -> dict[str, Any]:
    """One row of the rejects table: an item that could not be processed, and why.

    ``input_hash``: the content hash of the input row it came from (``InputRow.content_hash``), so
    that the rejection is examined again once the row changes."""
    return {"id": item_id, "stage": stage, "reason": reason, "detail": detail, "k": k, "n": n,
            "input_hash": input_hash}


def reject_summary(records: Sequence[Mapping[str, Any]], examples: int = 3) -> list[str]:
    """One console line per reason, most frequent first: count and the first ``examples`` rows."""
    by_reason: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        by_reason.setdefault(record["reason"], []).append(record)
    lines = []
    for reason, group in sorted(by_reason.items(), key=lambda item: -len(item[1])):
        shown = "; ".join(f"{r['id']}: {r.get('detail') or reason}"[:200] for r in group[:examples])
        lines.append(f"  {reason}: {len(group)}, e.g. {shown}" + (" ..." if len(group) > examples else ""))
    return lines


def _quote(keys: Iterable[Any]) -> str:
    keys = list(keys)
    shown = ", ".join(repr(key) for key in keys[:_SHOWN])
    return shown + (f" … ({len(keys)} in all)" if len(keys) > _SHOWN else "")


def _read_meta_file(directory: Path) -> dict[str, Any] | None:
    path = directory / TABLE_META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        tuple(meta["key_columns"])
        return meta
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"unreadable table description {path}: {exc}") from exc


def _read_meta(directory: Path) -> tuple[str, ...] | None:
    meta = _read_meta_file(directory)
    return None if meta is None else tuple(meta["key_columns"])


def _write_meta(directory: Path, name: str, key_columns: Sequence[str],
                provenance: Mapping[str, Any] | None = None) -> None:
    """Describe a table once; a description is rewritten only to record provenance it lacked."""
    meta = _read_meta_file(directory)
    if meta is not None and (provenance is None or meta.get("provenance") == provenance):
        return
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"table": name, "key_columns": list(key_columns), "format": 1,
            **({"provenance": dict(provenance)} if provenance is not None else {})}
    write_text_atomic(directory / TABLE_META, json.dumps(meta, sort_keys=True, indent=1) + "\n")


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

    @property
    def provenance(self) -> dict[str, Any] | None:
        """What made this table's rows, as recorded in ``_table.json`` (None: nothing recorded)."""
        meta = _read_meta_file(self.directory)
        return None if meta is None else meta.get("provenance")

    def record_provenance(self, provenance: Mapping[str, Any]) -> None:
        _write_meta(self.directory, self.name, self.key_columns, provenance)

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
        with atomic_path(final) as temp, open(temp, "wb") as handle:
            pq.write_table(table, handle)
        self._seq += 1
        if self._schema is None:
            self._schema = table.schema
        return final

    def _remove_dead_temp_files(self) -> None:
        """Temp files of this writer are leftovers of a killed run; others' only once stale."""
        if not self.directory.is_dir():
            return
        own = f"{TEMP_PREFIX}{self._writer}-"
        for path in self.directory.glob(f".*{TEMP_MARK}*"):
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

    def check_provenance(self, name: str, expected: Mapping[str, Any], *, record: bool,
                         key_columns: Sequence[str] | None = None, hint: str = "") -> Table:
        """Refuse table ``name`` unless it was made under ``expected``; return it.

        A table without rows gets ``expected`` recorded when ``record`` (the stage about to write
        it), whatever a run that stored nothing recorded before. A table whose record differs, or that has rows and no record,
        is a ``StoreError`` naming the table and each setting that changed; ``hint`` says what to
        do instead (e.g. another store directory).
        """
        table = self.table(name, key_columns)
        recorded = table.provenance
        if record and recorded is not None and recorded != expected and not table.shard_paths():
            recorded = None  # recorded by a run that stored nothing: there is nothing to protect
        if recorded is None:
            if table.shard_paths():
                raise StoreError(f"table {name!r} in {self.root} has rows but no record of the model and "
                                 f"settings that made them, so they cannot be checked against this run. {hint}")
            if record:
                table.record_provenance(expected)
            return table
        changes = provenance_changes(recorded, expected)
        if changes:
            raise StoreError(f"table {name!r} in {self.root} was made under other settings than this run's:\n  "
                             + "\n  ".join(changes) + (f"\n{hint}" if hint else ""))
        return table

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

    def rejected_keys(self, stage: str, key_columns: Sequence[str] = ("id",),
                      input_hashes: Mapping[str, str] | None = None) -> set[tuple]:
        """Keys (``key_columns`` of the rejects table) that ``stage`` rejected for good: skip them on restart.

        Transient failures (``TRANSIENT_REASONS``) are never skipped. With ``input_hashes`` (id ->
        the input row's current content hash), a reject of a row whose content changed since is
        not skipped either: the row is examined again.
        """
        if not self.rejects.shard_paths():
            return set()
        columns = list(dict.fromkeys(["stage", "reason", "input_hash", "id", *key_columns]))
        table = self.rejects.read(columns).to_pydict()
        keys = set()
        for row, row_stage in enumerate(table["stage"]):
            if row_stage != stage or table["reason"][row] in TRANSIENT_REASONS:
                continue
            if input_hashes is not None and input_hashes.get(table["id"][row]) != table["input_hash"][row]:
                continue
            keys.add(tuple(table[name][row] for name in key_columns))
        return keys
