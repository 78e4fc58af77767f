"""Read and validate rollout input rows (docs/ALGORITHM.md §2): parquet or JSONL, one (image, question, answer) each.

What: ``read_inputs(paths, shard)`` returns the valid rows of the files as ``InputRow``s and a
reject record (``store.reject_record``, stage ``"input"``) for every row that cannot be used.
Columns: ``id``, ``question``, ``answer`` (gold; text or a number), ``source`` (optional,
default ``""``), ``difficulty`` (optional), and the image as one of

- ``image``: a path (relative to the input file's directory, or absolute);
- ``image``: encoded bytes (a parquet binary column, or a Hugging Face ``datasets`` image
  struct ``{bytes, path}``);
- ``image_b64``: base64 of the encoded bytes (JSONL).

``answer`` and the image are required by default (rollout inputs); a reader of other row kinds
passes ``require=`` with the subset it needs (the packer reads text-only samples with no gold
answer: ``require=()``; a missing optional answer becomes ``""``, a missing image ``None``) and
names the extra columns it wants copied verbatim into ``InputRow.extra`` (``extra_columns=``).

Why rejects instead of errors: one bad row in a million must not stop a multi-day run, and
must not vanish either; the stage writes the rejects to the store, where they are counted by
reason. A file that cannot be read at all is different: that is a ``UserError`` naming it.

Ids must be unique over all files read together: an id that occurs more than once is an error
(``UserError`` naming the ids and where they occur), since the store keys everything by id and
picking one of the copies would be arbitrary. Sharding (``--shard i/n``) keeps only the rows, and
reports only the rejects, whose id the shard owns; duplicates are still found over all rows, and
images are decoded only for the shard's rows. A JSONL line that is not UTF-8 is an error naming
the file and the line.

Every row (and every reject) carries ``content_hash``: a sha256 of the row's fields, of image
bytes held in the row, and of the size and modification time of an image file it names. The
store keys rejects by it, so a row fixed after a rejection (a repaired image, an added answer) is
examined again by the next run.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout.sharding import Shard
from rollout.store import reject_record
from sophia_common.cli import UserError

INPUT_STAGE = "input"

MISSING_ID = "missing_id"
DUPLICATE_ID = "duplicate_id"
BAD_ROW = "bad_row"
EMPTY_QUESTION = "empty_question"
MISSING_ANSWER = "missing_answer"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"

JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
_DUPLICATES_SHOWN = 5


@dataclass(frozen=True)
class InputRow:
    """One usable input: the image is a file path or the encoded bytes (never decoded pixels)."""

    id: str
    question: str
    answer: str
    source: str
    image: Path | bytes | None
    """None only for a text-only row read with ``require`` not containing ``"image"``."""
    difficulty: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    """The ``extra_columns`` asked for, as read (absent columns are absent here)."""
    content_hash: str = field(default="", compare=False)
    """sha256 of the row's content (see the module docstring); rejects of this row are keyed by it."""

    def image_bytes(self) -> bytes:
        """The encoded image (read from disk when the row holds a path)."""
        if self.image is None:
            raise ValueError(f"input row {self.id!r} has no image")
        return self.image if isinstance(self.image, bytes) else self.image.read_bytes()


@dataclass
class Inputs:
    """Valid rows (input order) and reject records (``stage="input"``) of one read."""

    rows: list[InputRow] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def reject_counts(self) -> dict[str, int]:
        return dict(Counter(record["reason"] for record in self.rejects).most_common())

    def content_hashes(self) -> dict[str, str]:
        """id -> content hash of every usable row and of every rejected row with an id."""
        hashes = {record["id"]: record["input_hash"] for record in self.rejects}
        hashes.update((row.id, row.content_hash) for row in self.rows)
        return hashes


class _Rejected(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


REQUIRED_BY_DEFAULT = ("image", "answer")


def read_inputs(paths: str | Path | Sequence[str | Path], shard: Shard | None = None,
                check_images: bool = True, *, require: Collection[str] = REQUIRED_BY_DEFAULT,
                extra_columns: Sequence[str] = ()) -> Inputs:
    """Read rollout input files; see the module docstring for columns and reject reasons.

    ``require``: which of ``"image"`` and ``"answer"`` a row must have (``id`` and ``question``
    always). ``extra_columns``: further columns copied as read into each row's ``extra``.
    """
    unknown = set(require) - set(REQUIRED_BY_DEFAULT)
    if unknown:
        raise ValueError(f"require may name only {REQUIRED_BY_DEFAULT}, not {sorted(unknown)}")
    rules = _RowRules(frozenset(require), tuple(extra_columns), check_images)
    shard = shard or Shard()
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(path) for path in paths]
    if len({file.resolve() for file in files}) != len(files):
        raise UserError(f"an input file is listed twice: {', '.join(map(str, files))}")
    result = Inputs()
    locations: dict[str, list[str]] = {}
    owned: list[tuple[str, str, dict[str, Any], Path]] = []
    for file in files:
        for where, record, problem in _records(file, rules.require):
            location = f"{file.name} {where}"
            try:
                item_id = _item_id(record, problem)
            except _Rejected as rejected:
                placeholder = f"<{location}>"  # no usable id: name the row so the reject is traceable
                if shard.owns(placeholder):
                    result.rejects.append(reject_record(placeholder, INPUT_STAGE, rejected.reason,
                                                        f"{location}: {rejected.detail}",
                                                        input_hash=content_hash(record or problem, None)))
                continue
            locations.setdefault(item_id, []).append(location)
            if shard.owns(item_id):
                owned.append((item_id, location, record, file.absolute().parent))
    _refuse_duplicates(locations)
    for item_id, location, record, base_dir in owned:
        row_hash = content_hash(record, base_dir)
        try:
            result.rows.append(_validated_row(item_id, record, base_dir, rules, row_hash))
        except _Rejected as rejected:
            result.rejects.append(reject_record(item_id, INPUT_STAGE, rejected.reason,
                                                f"{location}: {rejected.detail}", input_hash=row_hash))
    return result


def _refuse_duplicates(locations: dict[str, list[str]]) -> None:
    repeated = {item_id: where for item_id, where in locations.items() if len(where) > 1}
    if not repeated:
        return
    shown = "; ".join(f"{item_id!r} at {', '.join(where[:_DUPLICATES_SHOWN])}"
                      for item_id, where in list(repeated.items())[:_DUPLICATES_SHOWN])
    more = f" (and {len(repeated) - _DUPLICATES_SHOWN} more)" if len(repeated) > _DUPLICATES_SHOWN else ""
    raise UserError(f"{len(repeated)} id(s) occur more than once in the input: {shown}{more}. Every row "
                    f"needs its own id (results are stored by id): remove the repeated rows, or make the "
                    f"ids unique, e.g. by prefixing them with their file or source")


def content_hash(record: Any, base_dir: Path | None) -> str:
    """sha256 of an input row: its fields, image bytes, and size + mtime of an image file it names."""
    digest = hashlib.sha256()

    def add(value: Any) -> None:
        if isinstance(value, (bytes, bytearray, memoryview)):
            digest.update(b"b" + hashlib.sha256(bytes(value)).digest())
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=str):
                digest.update(json.dumps(str(key)).encode())
                add(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                add(item)
            digest.update(b"]")
        else:
            digest.update(json.dumps(value, sort_keys=True, default=str).encode())

    add(record)
    image = record.get("image") if isinstance(record, dict) else None
    if isinstance(image, dict):
        image = image.get("path") if not image.get("bytes") else None
    if isinstance(image, str) and image.strip() and base_dir is not None:
        path = Path(image) if Path(image).is_absolute() else base_dir / image
        try:
            stat = path.stat()
            digest.update(f"file:{stat.st_size}:{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(b"file:absent")
    return digest.hexdigest()


@dataclass(frozen=True)
class _RowRules:
    require: frozenset[str]
    extra_columns: tuple[str, ...]
    check_images: bool


def _records(file: Path, require: frozenset[str]) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    """(``"line 3"`` / ``"row 2"``, the row as a dict or None, why it is not a row) for each row."""
    if not file.is_file():
        raise UserError(f"rollout input {file} does not exist or is not a file")
    suffix = file.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _jsonl_records(file)
    if suffix in PARQUET_SUFFIXES:
        return _parquet_records(file, require)
    raise UserError(f"rollout input {file}: unknown format {suffix!r}; use one of "
                    f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)}")


def _jsonl_records(file: Path) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    try:
        with open(file, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise UserError(f"rollout input {file}, line {number}: not UTF-8 (byte "
                                    f"{raw[exc.start]:#04x} at column {exc.start + 1}); save the file as "
                                    f"UTF-8") from exc
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"line {number}", None, f"not valid JSON ({exc.msg})"
                    continue
                if isinstance(record, dict):
                    yield f"line {number}", record, ""
                else:
                    yield f"line {number}", None, f"not a JSON object but {type(record).__name__}"
    except OSError as exc:
        raise UserError(f"cannot read rollout input {file}: {exc}") from exc


def _parquet_records(file: Path, require: frozenset[str]) -> Iterator[tuple[str, dict[str, Any] | None, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(file) as parquet:
            names = parquet.schema_arrow.names
            needed = ("id", "question", "answer") if "answer" in require else ("id", "question")
            absent = [name for name in needed if name not in names]
            if "image" in require and "image" not in names and "image_b64" not in names:
                absent.append("image")
            if absent:
                raise UserError(f"rollout input {file} has no column(s) {', '.join(absent)} "
                                f"(it has {', '.join(names)})")
            index = 0
            for batch in parquet.iter_batches(batch_size=256):
                for record in batch.to_pylist():
                    yield f"row {index}", record, ""
                    index += 1
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read rollout input {file}: {exc}") from exc


def _item_id(record: dict[str, Any] | None, problem: str) -> str:
    if record is None:
        raise _Rejected(BAD_ROW, problem)
    item_id = record.get("id")
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        return str(item_id)
    if not isinstance(item_id, str) or not item_id.strip():
        raise _Rejected(MISSING_ID, f"no id (got {item_id!r}); ids must be non-empty text or integers")
    return item_id


def _validated_row(item_id: str, record: dict[str, Any], base_dir: Path, rules: _RowRules,
                   row_hash: str) -> InputRow:
    question = record.get("question")
    if not isinstance(question, str) or not question.strip():
        raise _Rejected(EMPTY_QUESTION, f"question is {question!r}")
    answer = record.get("answer")
    if "answer" not in rules.require and (answer is None or answer == "" or answer != answer):
        answer = ""  # optional and absent (None, empty, or pandas' NaN)
    elif (isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip()
            or answer != answer):  # NaN: how pandas writes a missing value in a float column
        raise _Rejected(MISSING_ANSWER, f"gold answer is {answer!r}; it must be non-empty text or a number")
    image = _image_of(record, base_dir, required="image" in rules.require)
    if rules.check_images and image is not None:
        _check_decodes(image)
    difficulty = record.get("difficulty")
    extra = {name: record[name] for name in rules.extra_columns if name in record}
    return InputRow(id=item_id, question=question, answer=str(answer), source=str(record.get("source") or ""),
                    image=image, difficulty=None if difficulty is None else str(difficulty), extra=extra,
                    content_hash=row_hash)


def _image_of(record: dict[str, Any], base_dir: Path, required: bool = True) -> Path | bytes | None:
    image, encoded = record.get("image"), record.get("image_b64")
    if image not in (None, "", b"") and encoded not in (None, ""):
        raise _Rejected(BAD_ROW, "both image and image_b64 are given; keep one")
    if encoded not in (None, ""):
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise _Rejected(UNREADABLE_IMAGE, f"image_b64 is not valid base64 ({exc})") from exc
    if isinstance(image, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        image = image.get("bytes") or image.get("path")
    if isinstance(image, (bytes, bytearray, memoryview)) and len(image):
        return bytes(image)
    if isinstance(image, str) and image.strip():
        path = Path(image)
        path = path if path.is_absolute() else base_dir / path
        if not path.is_file():
            raise _Rejected(MISSING_IMAGE, f"image file {path} does not exist")
        return path
    if not required:
        return None
    raise _Rejected(MISSING_IMAGE, "no image (give image as a path or bytes, or image_b64)")


def _check_decodes(image: Path | bytes) -> None:
    """Decode the whole image: a truncated file passes ``Image.open`` and fails only here."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as decoded:
            decoded.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise _Rejected(UNREADABLE_IMAGE, f"cannot decode image: {type(exc).__name__}: {exc}") from exc
