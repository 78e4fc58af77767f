"""Megatron checkpoint -> HF InternVL (original or transformers-native), shard by shard.

Rank files are opened with ``torch.load(mmap=True)``, so nothing is read until a tensor is
used. Output shards are produced one at a time: for each shard, the table rows that feed
it are gathered across TP ranks, inverted to transformers-native tensors (and renamed /
fused into the original format when asked), written, and freed. Exporting to the source
format reuses the source's shard assignment and index, so a round trip gives back the
same files: every tensor bit-identical, config and tokenizer files byte-identical.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from conversion.arch import InternVLArch
from conversion.convert import Layout, placements
from conversion.hf_checkpoint import read_json
from conversion.hf_formats import hf_config_to_original, hf_to_original, original_config_to_hf
from conversion.internvl_mapping import Row, expand, table
from conversion.megatron_layout import stored_once, tp_mapping
from conversion.output import check_output_path, write_output_dir
from sophia_common.cli import UserError
from sophia_common.log import get_logger, progress
from sophia_common.mcore_checkpoint import HF_FILES, META_NAME, RANK_FILE, TRACKER, iter_dir_name

SHARD_BYTES = 4 * 1024**3
log = get_logger("sophia.convert")


class MegatronCheckpoint:
    """A converted (or trained-and-exported) Megatron checkpoint, read lazily."""

    def __init__(self, directory: str | Path) -> None:
        from conversion.dir_kind import wrong_input_hint

        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise UserError(f"{self.directory}: not a directory")
        if hint := wrong_input_hint(self.directory, "megatron"):
            raise UserError(hint)
        self.meta = read_json(self.directory / META_NAME)
        self.arch = InternVLArch.from_dict(self.meta["arch"])
        self.layout = Layout.from_meta(self.meta)
        tracker = self.directory / TRACKER
        if not tracker.is_file():
            raise UserError(f"{tracker}: file not found")
        iteration = tracker.read_text().strip()
        self.iter_dir = self.directory / iter_dir_name(iteration)
        self.rows = expand(table(self.arch, padded_vocab=self.meta["padded_vocab_size"],
                                 spec=self.layout.spec), self.arch)
        self._shards: dict[tuple[int, int], dict[str, Any]] = {}

    def rank_state(self, tp_rank: int, pp_rank: int) -> dict[str, Any]:
        import torch

        key = (tp_rank, pp_rank)
        if key not in self._shards:
            path = self.iter_dir / self.layout.rank_dir(tp_rank, pp_rank) / RANK_FILE
            if not path.is_file():
                raise UserError(f"{path}: rank file missing")
            try:
                self._shards[key] = torch.load(path, mmap=True, weights_only=True, map_location="cpu")["model"]
            except Exception as exc:
                raise UserError(f"{path}: cannot be read as a torch checkpoint ({exc})") from exc
        return self._shards[key]

    def full_tensor(self, megatron_name: str) -> Any:
        """The full (TP-gathered) tensor of one Megatron parameter."""
        pp_rank, local = placements(megatron_name, self.arch, self.layout)[0]
        pieces = []
        for tp_rank in range(1 if stored_once(megatron_name) else self.layout.tp):
            state = self.rank_state(tp_rank, pp_rank)
            if local not in state:
                raise UserError(f"{self.iter_dir / self.layout.rank_dir(tp_rank, pp_rank)}: "
                                f"tensor '{local}' missing")
            pieces.append(state[local])
        return tp_mapping(megatron_name, gated_mlp=True).gather(pieces)

    def hf_tensors(self, row: Row) -> list[tuple[str, Any]]:
        """The transformers-native tensors of one table row."""
        import torch

        full = self.full_tensor(row.megatron)
        dtypes = self.meta.get("hf_dtypes") or {}  # sources fused with partners of another dtype
        return [(name, tensor.to(getattr(torch, dtypes[name])) if name in dtypes else tensor)
                for name, tensor in zip(row.hf, row.transform.to_hf(full, len(row.hf)), strict=True)]


def _outputs(ckpt: MegatronCheckpoint, row: Row, fmt: str, config: dict) -> list[tuple[str, Any]]:
    named = ckpt.hf_tensors(row)
    return list(hf_to_original(named, config)) if fmt == "original" else named


def _plan_shards(ckpt: MegatronCheckpoint, fmt: str, config: dict) -> tuple[dict[str, str], dict[str, int]]:
    """Output tensor name -> shard file, and -> row index (the source plan when formats agree)."""
    row_of: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for index, row in enumerate(ckpt.rows):
        for name, tensor in _outputs(ckpt, row, fmt, config):
            row_of[name] = index
            sizes[name] = tensor.numel() * tensor.element_size()
    if fmt == ckpt.meta["source_format"] and set(ckpt.meta["source_weight_map"]) == set(row_of):
        return dict(ckpt.meta["source_weight_map"]), row_of
    groups: list[list[str]] = [[]]
    running = 0
    for name in row_of:
        if groups[-1] and running + sizes[name] > SHARD_BYTES:
            groups.append([])
            running = 0
        groups[-1].append(name)
        running += sizes[name]
    files = {}
    for i, group in enumerate(groups, start=1):
        files.update(dict.fromkeys(group, f"model-{i:05d}-of-{len(groups):05d}.safetensors"))
    return files, row_of


def _shard_tensors(ckpt: MegatronCheckpoint, names: list[str], row_of: dict[str, int], fmt: str,
                   config: dict) -> Iterator[tuple[str, Any]]:
    wanted = set(names)
    for index in sorted({row_of[n] for n in names}):
        for name, tensor in _outputs(ckpt, ckpt.rows[index], fmt, config):
            if name in wanted:
                yield name, tensor.contiguous()


def _write_configs(ckpt: MegatronCheckpoint, tmp: Path, fmt: str, weight_map: dict[str, str]) -> None:
    source = ckpt.directory / HF_FILES
    for path in sorted(source.iterdir()):
        if path.name not in ("config.json", "model.safetensors.index.json"):
            shutil.copy2(path, tmp / path.name)
    same = fmt == ckpt.meta["source_format"]
    if same:
        shutil.copy2(source / "config.json", tmp / "config.json")
    else:
        config = ckpt.meta["source_config"]
        converted = hf_config_to_original(config) if fmt == "original" else original_config_to_hf(config)
        (tmp / "config.json").write_text(json.dumps(converted, indent=2) + "\n")
    if same and (source / "model.safetensors.index.json").is_file() and \
            weight_map == ckpt.meta["source_weight_map"]:
        shutil.copy2(source / "model.safetensors.index.json", tmp / "model.safetensors.index.json")
    else:
        index = {"metadata": {}, "weight_map": weight_map}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def mcore_to_hf(mcore_dir: str | Path, out_dir: str | Path, *, fmt: str | None = None,
                force: bool = False) -> dict[str, Any]:
    from safetensors.torch import save_file

    check_output_path(Path(out_dir), force)
    ckpt = MegatronCheckpoint(mcore_dir)
    fmt = fmt or ckpt.meta["source_format"]
    if fmt not in ("hf", "original"):
        raise UserError(f"unknown output format {fmt!r} (choose 'hf' or 'original')")
    config = ckpt.meta["source_config"]
    weight_map, row_of = _plan_shards(ckpt, fmt, config)
    written = 0

    def build(tmp: Path) -> None:
        nonlocal written
        for shard in progress(list(dict.fromkeys(weight_map.values())), desc="mcore-to-hf", unit="shard"):
            names = [n for n, f in weight_map.items() if f == shard]
            tensors = dict(_shard_tensors(ckpt, names, row_of, fmt, config))
            save_file(tensors, str(tmp / shard), metadata={"format": "pt"})
            written += sum(t.numel() * t.element_size() for t in tensors.values())
            del tensors
        _write_configs(ckpt, tmp, fmt, weight_map)

    write_output_dir(out_dir, force, build)
    log.info("wrote %s (%s format, %.1f MB)", out_dir, fmt, written / 1e6)
    return {"bytes": written, "format": fmt}
