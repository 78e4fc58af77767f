"""Provenance of rollout tables: what made their rows, recorded once per table and compared on reuse.

What: ``caption_provenance`` / ``reason_provenance`` / ``score_provenance`` / ``select_provenance``
describe what a stage's table depends on: the model (path and ``weights_fingerprint``), the
engine, dtype and sampling settings, a sha256 of the prompt text, K and N, the settings of
verification (with the generative judge's served model and prompt hash when it is on) and
selection, and the provenance digest of the table it was computed from.
``rollout.store`` records that description in the table's ``_table.json`` with the first write and
refuses a later run whose description differs (``provenance_changes`` names each setting that
changed). The ``path`` of a model and the ``engine`` are recorded and shown, not compared
(``INFORMATIONAL_KEYS``).

Weights fingerprint (``weights_fingerprint``): sha256 over the small files that define a
checkpoint (config.json, generation_config.json, the safetensors index, the tokenizer files) and,
for every weight file (``*.safetensors``, ``*.bin``, ``*.pt``, ``*.pth``), its name, its size and
``SAMPLED_BLOCKS`` blocks of ``BLOCK_BYTES`` bytes read at evenly spaced offsets (the first block
holds a safetensors header: tensor names, dtypes, shapes). File times are not used, so a copied
checkpoint keeps its fingerprint; a retrained one changes it, since training rewrites every block
of the language weights. It reads about 1 MiB per weight file: seconds even for a 38B model. An
edit confined to bytes between the sampled blocks is not seen; export each model to its own
directory, as the trainer does. A hub id (vLLM only) is fingerprinted by its name. With ``engine:
openai`` the weights sit behind a server: the record holds ``served_model`` and the fingerprint of
``model``, so give ``model`` the checkpoint dir the server loads (the server's address is not
compared: it changes from job to job).

Why: SOPHIA trains a new policy every round. Without this, rerunning into the same store with the
new policy reported ``already_done`` and fed the old policy's captions into selection.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

INFORMATIONAL_KEYS = frozenset({"path", "engine"})
"""Provenance entries recorded and shown in messages but not compared: a model moved to another
directory is the same model when its fingerprint matches, and the same weights sample from the same
distribution whether vLLM runs them in-process or behind a server."""
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DEFINING_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json",
                  "pytorch_model.bin.index.json", "preprocessor_config.json")
SAMPLED_BLOCKS = 16
BLOCK_BYTES = 64 * 1024


def provenance_digest(provenance: Mapping[str, Any] | None) -> str:
    """A short, stable digest of the compared part of a provenance record (None: ``none``)."""
    if provenance is None:
        return "none"
    text = json.dumps(_compared(provenance), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _compared(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _compared(item) for key, item in value.items() if key not in INFORMATIONAL_KEYS}
    return value


def provenance_changes(recorded: Any, expected: Any, prefix: str = "") -> list[str]:
    """One line per compared setting that differs: ``key: recorded X, now Y`` (paths shown for context)."""
    if isinstance(recorded, Mapping) and isinstance(expected, Mapping):
        changes = []
        for key in sorted(set(recorded) | set(expected)):
            if key in INFORMATIONAL_KEYS:
                continue
            name = f"{prefix}.{key}" if prefix else key
            changes += provenance_changes(recorded.get(key), expected.get(key), name)
        if changes and (recorded.get("path") or expected.get("path")) and \
                recorded.get("path") != expected.get("path"):
            changes.append(f"{prefix + '.' if prefix else ''}path: recorded {recorded.get('path')!r}, "
                           f"now {expected.get('path')!r}")
        return changes
    if recorded == expected:
        return []
    return [f"{prefix or 'value'}: recorded {_short(recorded)}, now {_short(expected)}"]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _sampled_blocks(path: Path, size: int) -> bytes:
    """``SAMPLED_BLOCKS`` blocks at evenly spaced offsets (the whole file when it is small)."""
    with open(path, "rb") as handle:
        if size <= SAMPLED_BLOCKS * BLOCK_BYTES:
            return handle.read()
        step = (size - BLOCK_BYTES) // (SAMPLED_BLOCKS - 1)
        blocks = []
        for index in range(SAMPLED_BLOCKS):
            handle.seek(index * step)
            blocks.append(handle.read(BLOCK_BYTES))
        return b"".join(blocks)


def weights_fingerprint(model: str) -> str:
    """``sha256:…`` of a checkpoint dir (see the module docstring), ``hub:<id>`` for a hub id."""
    from sophia_common.tokenizer import fingerprint_dir

    if not model:
        return "none"
    directory = Path(model)
    if not directory.is_dir():
        return f"hub:{model}"
    digest = hashlib.sha256()
    for name in DEFINING_FILES:
        if (directory / name).is_file():
            digest.update(name.encode() + b"\0" + (directory / name).read_bytes())
    digest.update(b"tokenizer\0" + fingerprint_dir(directory).encode())
    for path in sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.name}\0{size}\0".encode() + _sampled_blocks(path, size))
    return "sha256:" + digest.hexdigest()


_FINGERPRINTS: dict[str, str] = {}


def engine_provenance(config: Any) -> dict[str, Any] | None:
    """The settings of an ``EngineConfig`` that change what it generates (None: no such engine)."""
    if config is None:
        return None
    key = str(Path(config.model).absolute()) if config.model and Path(config.model).is_dir() else config.model
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = weights_fingerprint(config.model)
    return {"model": {"path": key, "weights": _FINGERPRINTS[key]}, "engine": config.engine,
            "served_model": getattr(config, "served_model", ""), "dtype": config.dtype,
            "sampling": {"temperature": config.temperature, "top_p": config.top_p,
                         "max_tokens": config.max_tokens, "seed": config.seed}}


def caption_provenance(config: Any, caption_prompt: str) -> dict[str, Any]:
    """The ``captions`` table: the captioner, its sampling, the caption prompt, K and the tiling."""
    captioner = config.captioner
    return {"stage": "caption", "captioner": engine_provenance(captioner), "K": captioner.K,
            "max_tiles": captioner.max_tiles, "prompt_sha256": _sha256(caption_prompt)}


def reason_provenance(config: Any, reasoning_prompt: str, captions: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``trajectories`` table: the reasoner(s), the prompt, N, and the captions it reasoned on."""
    reasoner = config.reasoner
    return {"stage": "reason", "easy": engine_provenance(reasoner.easy), "hard": engine_provenance(reasoner.hard),
            "hard_difficulties": sorted(reasoner.hard_difficulties) if reasoner.hard is not None else [],
            "N": config.N, "prompt_sha256": _sha256(reasoning_prompt),
            "captions": provenance_digest(captions)}


def score_provenance(config: Any, trajectories: Mapping[str, Any] | None,
                     judge: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``scores`` table: the verification settings, the generative judge (served model, prompt hash,
    endpoint; None when off) and the trajectories they scored."""
    return {"stage": "score", "verifier_timeout_s": config.verifier.timeout_s,
            "unfinished_think": config.verifier.unfinished_think, "judge": judge,
            "trajectories": provenance_digest(trajectories)}


def select_provenance(config: Any, scores: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``selected`` and ``decisions`` tables: the selection settings and the scores they read."""
    return {"stage": "select", "alpha": config.alpha, "keep_k": config.keep_k, "ablation": config.ablation,
            "seed": config.seed, "scores": provenance_digest(scores)}


def mismatch_hint(store_dir: str) -> str:
    """What to do when a table's record differs from this run (the last line of the error)."""
    return (f"A store holds the results of one set of models and settings. Run with a fresh "
            f"rollout.store_dir, or keep both in this store with rollout.namespace=NAME (tables under "
            f"{store_dir}/namespaces/NAME), or move the table away to recompute it.")
