"""The Megatron checkpoint contract between conversion and training: names, metadata, the reader.

Defined once, here, with no heavy imports, as ``sophia_common.contract`` is for packed data.
Two kinds of directory carry ``sophia_meta.json``:

- a **converted** checkpoint (``sophia-convert hf-to-mcore``, or the trainer's export staging),
  in the layout Megatron-LM's ``--ckpt-format torch`` loads::

      DIR/latest_checkpointed_iteration.txt                  the tracker: "0" (or "release")
      DIR/iter_0000000/mp_rank_TT[_PPP]/model_optim_rng.pt   {"model": {...}, "checkpoint_version": 3.0, ...}
      DIR/hf_files/                                          config, tokenizer and index of the HF source
      DIR/sophia_meta.json                                   kind "converted": arch, tp, pp, spec, source ...

- a **training** checkpoint (the trainer's ``checkpoint.save_dir``): Megatron distributed
  checkpoints ``DIR/iter_NNNNNNN/`` (language model, optimizer, LR schedule), the same tracker
  (written last, so an interrupted save is never picked up), and ``sophia_meta.json`` of kind
  "training": the converted checkpoint the run started from (its frozen vision path lives
  there), the step, the layout and the run's identity (what a resumed run must not change).

The metadata names its kind explicitly; files written before the field existed are told apart
by their content (a training run's metadata points at ``mcore_dir``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sophia_common.atomic import write_text_atomic

META_NAME = "sophia_meta.json"
TRACKER = "latest_checkpointed_iteration.txt"
HF_FILES = "hf_files"
RANK_FILE = "model_optim_rng.pt"
CHECKPOINT_VERSION = 3.0
CONVERTED = "converted"
TRAINING = "training"


class CheckpointError(ValueError):
    """A directory that is not the Megatron checkpoint it is used as (the message names the file)."""


def iter_dir_name(iteration: int | str) -> str:
    """``iter_0000042`` (or ``release``): the directory of one saved iteration."""
    return "release" if iteration == "release" else f"iter_{int(iteration):07d}"


def rank_dir_name(tp_rank: int, pp_rank: int, pp: int) -> str:
    """``mp_rank_TT`` without pipeline parallelism, ``mp_rank_TT_PPP`` with it (Megatron-LM's names)."""
    return f"mp_rank_{tp_rank:02d}" + (f"_{pp_rank:03d}" if pp > 1 else "")


def rank_file(directory: str | Path, iteration: int | str, tp_rank: int, pp_rank: int, pp: int) -> Path:
    return Path(directory) / iter_dir_name(iteration) / rank_dir_name(tp_rank, pp_rank, pp) / RANK_FILE


def read_tracker(directory: str | Path) -> int | str | None:
    """The iteration the tracker names (an int, or ``"release"``); None when there is no tracker."""
    path = Path(directory) / TRACKER
    if not path.is_file():
        return None
    text = path.read_text().strip()
    if text == "release":
        return text
    try:
        return int(text)
    except ValueError:
        raise CheckpointError(f"{path}: expected an iteration number, found {text[:40]!r}") from None


def write_tracker(directory: str | Path, iteration: int | str) -> None:
    """Point the tracker at ``iteration`` atomically (the last file a save writes)."""
    write_text_atomic(Path(directory) / TRACKER, str(iteration))


@dataclass
class TrainingMeta:
    """``sophia_meta.json`` of a trainer ``checkpoint.save_dir``."""

    mcore_dir: str                 # the converted checkpoint the run started from
    step: int
    tp: int
    pp: int
    data: str                      # the packed dataset directory
    identity: dict[str, Any] = field(default_factory=dict)  # what a resume must find unchanged
    kind: str = TRAINING

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def meta_kind(meta: dict[str, Any]) -> str:
    """``converted`` or ``training``: the explicit ``kind``, else told by content (older files)."""
    kind = meta.get("kind")
    if kind in (CONVERTED, TRAINING):
        return kind
    if kind is not None:
        raise CheckpointError(f"unknown checkpoint kind {kind!r} (expected {CONVERTED!r} or {TRAINING!r})")
    return TRAINING if "mcore_dir" in meta else CONVERTED


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The raw metadata of a Megatron checkpoint directory, with a clear error when it is not one."""
    path = Path(directory) / META_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found ({directory} is not a checkpoint written by "
                              f"sophia-convert hf-to-mcore or sophia-train)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return meta


def checkpoint_kind(directory: str | Path) -> str | None:
    """``converted``, ``training``, or None when ``directory`` holds no ``sophia_meta.json``."""
    if not (Path(directory) / META_NAME).is_file():
        return None
    return meta_kind(read_meta(directory))


def read_training_meta(directory: str | Path) -> TrainingMeta:
    meta = read_meta(directory)
    if meta_kind(meta) != TRAINING:
        raise CheckpointError(f"{Path(directory) / META_NAME}: a converted checkpoint, not a training run's "
                              f"checkpoint.save_dir")
    known = {k: meta[k] for k in ("mcore_dir", "step", "tp", "pp", "data", "identity") if k in meta}
    missing = {"mcore_dir", "step", "tp", "pp", "data"} - set(known)
    if missing:
        raise CheckpointError(f"{Path(directory) / META_NAME}: missing {', '.join(sorted(missing))}")
    return TrainingMeta(**known)


def write_training_meta(directory: str | Path, meta: TrainingMeta) -> None:
    write_text_atomic(Path(directory) / META_NAME, meta.to_json())
