"""The packed-dataset contract between rollout (writer) and training (reader), docs/ALGORITHM.md §2.

Defined once, here, with no heavy imports (pyarrow is imported inside functions), so the
vLLM environment that writes packs and the Megatron environment that reads them agree by
construction. A packed dataset is a directory::

    DIR/manifest.json                 schema version, tokenizer fingerprint, lengths, stats, provenance
    DIR/packs-00000.parquet, ...      PACK_SCHEMA rows; packs ordered by length (longest first)

One row is one pack of at most ``max_seq_len`` tokens holding whole samples back to back:

- ``input_ids``: the rendered conversations (InternVL chat template), image tokens already
  expanded (``<img>`` + ``<IMG_CONTEXT>`` x 256 per tile + ``</img>``), so lengths are exact;
- ``loss_mask``: 1 on tokens the model must *predict* (assistant turns), else 0; the reader
  shifts it onto the labels (token t is predicted at position t-1 of the same sample);
- ``cu_seqlens``: sample boundaries ``[0, len_1, len_1+len_2, ..., num_tokens]``;
- ``position_ids``: restart at 0 at every sample boundary;
- ``sample_weights``: one reward weight per sample (Eq. 6; 1.0 for SFT data and extra sources);
- ``sample_ids`` / ``sample_sources``: provenance of each sample;
- ``images``: encoded image bytes in order of appearance; ``image_tiles``: the tiling of each
  image (``sophia_common.images.TilePlan`` fields), so the loader reproduces the same tiles.

Pixels are produced at load time, never stored as floats. ``packs_per_shard`` is fixed
(the last shard may be shorter), so pack ``i`` lives in shard ``i // packs_per_shard`` at
row ``i % packs_per_shard``: a resumed run seeks to its position in O(1).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sophia_common.atomic import write_text_atomic

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_PATTERN = "packs-{:05d}.parquet"
TILE_FIELDS = ("width", "height", "cols", "rows", "image_size", "thumbnail")


def pack_schema() -> Any:
    import pyarrow as pa

    tile = pa.struct([("width", pa.int32()), ("height", pa.int32()), ("cols", pa.int32()),
                      ("rows", pa.int32()), ("image_size", pa.int32()), ("thumbnail", pa.bool_())])
    return pa.schema([
        ("pack_id", pa.int64()),
        ("num_tokens", pa.int32()),
        ("num_tiles", pa.int32()),
        ("input_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.int8())),
        ("position_ids", pa.list_(pa.int32())),
        ("cu_seqlens", pa.list_(pa.int32())),
        ("sample_weights", pa.list_(pa.float32())),
        ("sample_ids", pa.list_(pa.string())),
        ("sample_sources", pa.list_(pa.string())),
        ("images", pa.list_(pa.binary())),
        ("image_tiles", pa.list_(tile)),
    ])


@dataclass
class Manifest:
    schema_version: int
    tokenizer_fingerprint: str
    max_seq_len: int
    max_tiles_per_pack: int | None
    tokens_per_tile: int
    image_size: int
    packs: int
    packs_per_shard: int
    shards: list[str]
    stats: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def shard_of(self, pack_index: int) -> tuple[str, int]:
        """(shard file, row) of the pack at position ``pack_index`` of the length-sorted order."""
        if not 0 <= pack_index < self.packs:
            raise IndexError(f"pack {pack_index} out of range (dataset has {self.packs})")
        return self.shards[pack_index // self.packs_per_shard], pack_index % self.packs_per_shard

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


class ContractError(ValueError):
    """A packed dataset that does not satisfy this contract (the message names the file)."""


def read_manifest(directory: str | Path) -> Manifest:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ContractError(f"{path}: no manifest (not a packed dataset)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path}: not valid JSON ({exc})") from exc
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ContractError(f"{path}: schema version {data.get('schema_version')} is not the supported "
                            f"version {SCHEMA_VERSION}; rebuild the dataset with this release")
    try:
        return Manifest(**data)
    except TypeError as exc:
        raise ContractError(f"{path}: malformed manifest ({exc})") from exc


def write_manifest(directory: str | Path, manifest: Manifest) -> None:
    """Write the manifest atomically (temporary name, fsync, rename)."""
    write_text_atomic(Path(directory) / MANIFEST_NAME, manifest.to_json())


def check_compatible(manifest: Manifest, *, tokenizer_fingerprint: str, max_seq_len: int, where: str) -> None:
    """Refuse a dataset made for another tokenizer or a longer context than the model trains on."""
    if manifest.tokenizer_fingerprint != tokenizer_fingerprint:
        raise ContractError(f"{where}: tokenizer fingerprint {manifest.tokenizer_fingerprint[:12]} does not match "
                            f"the model's tokenizer {tokenizer_fingerprint[:12]}; re-pack with the policy's tokenizer")
    if manifest.max_seq_len > max_seq_len:
        raise ContractError(f"{where}: packs of up to {manifest.max_seq_len} tokens, but the trainer's "
                            f"max sequence length is {max_seq_len}")
