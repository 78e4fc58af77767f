"""Lazy, validated access to an InternVL checkpoint directory in either Hugging Face format.

``HFCheckpoint(dir)`` reads ``config.json`` and every safetensors header (not the data),
checks that each shard exists, parses, and is as long as its header says, and presents the
tensors under their transformers-native names whatever the on-disk format: an
original-format fused ``qkv`` / ``wqkv`` is read once and split on demand. Shapes are
checked against the architecture from ``config.json`` before any data is read. Every
problem is a ``UserError`` that names the file or tensor.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from conversion.arch import InternVLArch, arch_from_hf_config
from conversion.hf_formats import (
    detect_format,
    image_context_id,
    normalize_hf_name,
    original_config_to_hf,
    original_to_hf,
)
from sophia_common.cli import UserError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64",
           "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
           "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}


def tied_embedding_keys(config: dict[str, Any]) -> str | None:
    """The config key that ties input and output embeddings (top level or the language model's), if any."""
    for section in ("text_config", "llm_config"):
        if isinstance(config.get(section), dict) and config[section].get("tie_word_embeddings"):
            return f"{section}.tie_word_embeddings"
    return "tie_word_embeddings" if config.get("tie_word_embeddings") else None


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from exc


def read_safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``name -> (dtype, shape)`` from a safetensors header; checks the file is complete."""
    if not path.is_file():
        raise UserError(f"{path}: shard listed in the index is missing")
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise UserError(f"{path}: corrupt safetensors file (shorter than its header length)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(size - 8, 100_000_000):
            raise UserError(f"{path}: corrupt safetensors header (length {header_len} for a {size}-byte file)")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: corrupt safetensors header ({exc})") from exc
    header.pop("__metadata__", None)
    end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if 8 + header_len + end > size:
        raise UserError(f"{path}: truncated ({size} bytes, header promises {8 + header_len + end})")
    return {name: (_DTYPES.get(v["dtype"], v["dtype"]), tuple(v["shape"])) for name, v in header.items()}


def data_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """``name -> (start, stop)`` byte range of each tensor's data in a (validated) safetensors file."""
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    return {name: (8 + header_len + int(v["data_offsets"][0]), 8 + header_len + int(v["data_offsets"][1]))
            for name, v in header.items()}


def preadv_exact(fd: int, buffers: list[memoryview], offset: int, path: Any) -> None:
    """Fill ``buffers`` in order from ``offset`` of the open file (short reads resumed; EOF is an error)."""
    limit = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
    i = 0
    while i < len(buffers):
        got = os.preadv(fd, buffers[i:i + limit], offset)
        if got == 0:
            raise UserError(f"{path}: truncated (no data at byte {offset})")
        offset += got
        while i < len(buffers) and got >= len(buffers[i]):
            got -= len(buffers[i])
            i += 1
        if got:  # a short read inside buffers[i]: read the rest of it next
            buffers = [*buffers[:i], buffers[i][got:], *buffers[i + 1:]]


def shard_map(directory: Path) -> dict[str, str]:
    """Tensor name -> shard file name, from the index or the single ``model.safetensors``."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index}: no 'weight_map'")
        return dict(weight_map)
    single = directory / "model.safetensors"
    if single.is_file():
        return dict.fromkeys(read_safetensors_header(single), "model.safetensors")
    raise UserError(f"{directory}: no model.safetensors or model.safetensors.index.json")


class HFCheckpoint:
    """One InternVL checkpoint directory, viewed through transformers-native tensor names."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise UserError(f"{self.directory}: not a directory")
        from conversion.dir_kind import wrong_input_hint

        if hint := wrong_input_hint(self.directory, "huggingface"):
            raise UserError(hint)
        self.config = read_json(self.directory / "config.json")
        try:
            self.format = detect_format(self.config)
            self.hf_config = self.config if self.format == "hf" else original_config_to_hf(
                self.config, image_token_id=image_context_id(self.directory))
            self.arch: InternVLArch = arch_from_hf_config(self.hf_config)
        except (KeyError, ValueError) as exc:
            raise UserError(f"{self.directory / 'config.json'}: unknown or unsupported architecture ({exc})") from exc
        if tied := tied_embedding_keys(self.config):
            raise UserError(
                f"{self.directory / 'config.json'}: {tied} is true: the input embedding and the output layer "
                "share one matrix, which the Megatron model trains as two (they would diverge, and transformers "
                "re-ties them on load). Only checkpoints with tie_word_embeddings: false are supported")
        self.weight_map = shard_map(self.directory)
        self._headers = {shard: read_safetensors_header(self.directory / shard)
                         for shard in dict.fromkeys(self.weight_map.values())}
        self._sources = self._index_sources()
        self._cache: tuple[str, dict[str, Any]] | None = None
        self._ranges: dict[str, dict[str, tuple[int, int]]] = {}

    def source_spec(self, name: str) -> tuple[str, tuple[int, ...]]:
        shard = self.weight_map[name]
        if name not in self._headers[shard]:
            raise UserError(f"{self.directory / shard}: tensor '{name}' listed in the index is not in the shard")
        return self._headers[shard][name]

    def _index_sources(self) -> dict[str, tuple[str, tuple[int, ...], str]]:
        """transformers-native name -> (source name, shape, dtype), using meta tensors for the split."""
        import torch

        sources = {}
        for name in self.weight_map:
            dtype, shape = self.source_spec(name)
            if self.format == "hf":
                sources[normalize_hf_name(name)] = (name, shape, dtype)
                continue
            meta = torch.empty(shape, dtype=getattr(torch, dtype), device="meta")
            try:
                for hf_name, piece in original_to_hf([(name, meta)], self.config):
                    sources[hf_name] = (name, tuple(piece.shape), dtype)
            except KeyError as exc:
                raise UserError(f"{self.directory}: unexpected tensor '{name}' ({exc})") from exc
        return sources

    def names(self) -> list[str]:
        return list(self._sources)

    def shape(self, hf_name: str) -> tuple[int, ...]:
        return self._sources[hf_name][1]

    def dtype(self, hf_name: str) -> str:
        return self._sources[hf_name][2]

    def torch_dtype(self, hf_name: str) -> Any:
        import torch

        return getattr(torch, self.dtype(hf_name))

    def whole_source(self, hf_name: str) -> tuple[Path, int] | None:
        """(shard path, byte offset of the data) when the tensor is one source tensor as stored, else None.

        None for a piece of an original-format fused tensor (cut on read by ``get``).
        """
        source, shape, _ = self._sources[hf_name]
        shard = self.weight_map[source]
        if self._headers[shard][source][1] != shape:
            return None
        return self.directory / shard, self._data_range(source)[0]

    def _data_range(self, source: str) -> tuple[int, int]:
        """(start, stop) byte offsets of a stored tensor's data in its shard (headers parsed once per shard)."""
        shard = self.weight_map[source]
        if shard not in self._ranges:
            self._ranges[shard] = data_ranges(self.directory / shard)
        return self._ranges[shard][source]

    def _read_source(self, source: str) -> Any:
        """One stored tensor, read with ``preadv`` into fresh memory (no memory map left behind)."""
        import torch

        shard = self.weight_map[source]
        dtype, shape = self._headers[shard][source]
        start, stop = self._data_range(source)
        buffer = torch.empty(stop - start, dtype=torch.uint8)
        fd = os.open(self.directory / shard, os.O_RDONLY)
        try:
            preadv_exact(fd, [memoryview(buffer.numpy())], start, self.directory / shard)
        finally:
            os.close(fd)
        return buffer.view(getattr(torch, dtype)).view(shape)

    def get(self, hf_name: str) -> Any:
        """Read one tensor (transformers-native name) from disk."""
        if hf_name not in self._sources:
            raise UserError(f"{self.directory}: tensor '{hf_name}' not found")
        source, _, _ = self._sources[hf_name]
        if self._cache and self._cache[0] == source:
            return self._cache[1][hf_name]
        tensor = self._read_source(source)
        if self.format == "hf":
            return tensor
        pieces = dict(original_to_hf([(source, tensor)], self.config))
        self._cache = (source, pieces)
        return pieces[hf_name]

    def prefetch(self, hf_names: list[str]) -> None:
        """Ask the kernel to start reading these tensors' bytes now (asynchronous readahead; a hint only).

        The converter calls it for the next row while it cuts and writes the current one, so the
        disk reads overlap the work instead of stalling the first touch of each tensor.
        """
        if not hasattr(os, "posix_fadvise"):
            return
        for source in dict.fromkeys(self._sources[n][0] for n in hf_names if n in self._sources):
            start, stop = self._data_range(source)
            fd = os.open(self.directory / self.weight_map[source], os.O_RDONLY)
            try:
                os.posix_fadvise(fd, start, stop - start, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def aux_files(self) -> list[Path]:
        """Everything but the weights: configs, tokenizer, chat template, remote code (copied, never run)."""
        return sorted(p for p in self.directory.iterdir()
                      if p.is_file() and not p.name.endswith(WEIGHT_SUFFIXES)
                      and p.name != "model.safetensors.index.json")
