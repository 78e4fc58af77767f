"""Rows of benchmark files, in the formats the benchmarks publish: parquet, JSON, JSONL.

``iter_rows(path)`` yields ``(file, index, row)`` for every row of a file, or of every
``*.parquet`` / ``*.json`` / ``*.jsonl`` under a directory or matching a glob pattern (``MMMU/*/validation-*``),
sorted; errors name a row as
``FILE:row N`` (0-based). Rows are plain dicts; a JSON file is a list of rows
(MV-MATH) or an object with a list under ``data``.

``field(row, "metadata.task")`` reads a (dotted) field; ``images_of(value, base_dirs)`` turns a
field's value into encoded images: a Hugging Face ``Image`` struct (``{bytes, path}``: the bytes
when present, else the path), raw bytes, ``data:``/base64 strings, a path (relative to the file's
directory or one of ``base_dirs``), or a list of those (multi-image benchmarks).

Every problem is a ``FormatError`` (a ``UserError``) naming the file, the row and the field.
"""

from __future__ import annotations

import base64
import binascii
import glob
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sophia_common.cli import UserError

SUFFIXES = (".parquet", ".json", ".jsonl")
_BATCH_ROWS = 64


class FormatError(UserError):
    """A benchmark file, row or field that cannot be read; the message names all three."""


def has_glob(path: Path) -> bool:
    return any(char in str(path) for char in "*?[")


def files_root(path: Path) -> Path:
    """The directory that file names are given relative to: ``path`` itself, its parent, or a glob's base."""
    if has_glob(path):
        parts = Path(path).parts
        return Path(*parts[:next(i for i, part in enumerate(parts) if has_glob(Path(part)))])
    return path if path.is_dir() else path.parent


def benchmark_files(path: Path) -> list[Path]:
    """``path`` itself, the benchmark files under the directory ``path``, or those a glob pattern matches."""
    if has_glob(path):
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True)
                       if Path(p).is_file() and Path(p).suffix.lower() in SUFFIXES)
        if not files:
            raise FormatError(f"{path}: the pattern matches no {', '.join(SUFFIXES)} file")
        return files
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise FormatError(f"{path}: not a benchmark file (expected {', '.join(SUFFIXES)})")
        return [path]
    if not path.is_dir():
        raise FormatError(f"{path}: no such benchmark file or directory")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise FormatError(f"{path}: holds no {', '.join(SUFFIXES)} file")
    return files


def iter_rows(path: Path) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    for file in benchmark_files(path):
        suffix = file.suffix.lower()
        rows = _parquet_rows(file) if suffix == ".parquet" else _jsonl_rows(file) if suffix == ".jsonl" \
            else _json_rows(file)
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                raise FormatError(f"{file}:row {index}: not an object (got {type(row).__name__})")
            yield file, index, row


def _parquet_rows(file: Path) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(file) as handle:
            for batch in handle.iter_batches(batch_size=_BATCH_ROWS):
                yield from batch.to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise FormatError(f"{file}: unreadable parquet ({exc})") from exc


def _json_rows(file: Path) -> list[Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FormatError(f"{file}: unreadable JSON ({exc})") from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise FormatError(f"{file}: expected a JSON list of rows (or {{\"data\": [...]}})")
    return data


def _jsonl_rows(file: Path) -> Iterator[dict[str, Any]]:
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise FormatError(f"{file}: unreadable ({exc})") from exc
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except ValueError as exc:
            raise FormatError(f"{file}:line {number + 1}: not JSON ({exc})") from exc


_MISSING = object()


def field(row: dict[str, Any], name: str, default: Any = _MISSING) -> Any:
    """The value of the dotted field ``name``; ``default`` (or a KeyError) when absent."""
    node: Any = row
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _MISSING:
                raise KeyError(name)
            return default
        node = node[part]
    return node


def images_of(value: Any, base_dirs: Sequence[Path]) -> list[bytes | Path]:
    """Encoded images (bytes, or an existing file) of one field value; [] for null."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [image for item in value for image in images_of(item, base_dirs)]
    if isinstance(value, dict):
        if value.get("bytes"):
            return [bytes(value["bytes"])]
        if value.get("path"):
            return images_of(value["path"], base_dirs)
        raise ValueError("an image struct with neither bytes nor path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        if not value:
            raise ValueError("empty image bytes")
        return [bytes(value)]
    if isinstance(value, str):
        return [_image_from_text(value, base_dirs)]
    raise ValueError(f"an image must be bytes, a path or an {{bytes, path}} struct, got {type(value).__name__}")


def _image_from_text(text: str, base_dirs: Sequence[Path]) -> bytes | Path:
    if text.startswith("data:") and "," in text:
        return _b64(text.split(",", 1)[1])
    candidate = Path(text)
    tried = [candidate] if candidate.is_absolute() else [base / candidate for base in base_dirs]
    for path in tried:
        if path.is_file():
            return path
    if len(text) > 256 and "/" not in text[:64]:  # a bare base64 string (some JSONL exports)
        return _b64(text)
    raise ValueError(f"image file {text!r} not found (looked in {', '.join(str(p.parent) for p in tried)})")


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"invalid base64 image ({exc})") from exc
