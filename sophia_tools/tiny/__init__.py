"""Tiny, offline, deterministic fixtures: tokenizers, InternVL checkpoints, a reasoning LLM.

Everything is built in-process in a few seconds with no download, so every test (conversion,
packing, training, rollout) runs against files shaped like the real ones:

    from sophia_tools.tiny import build_all
    paths = build_all("/tmp/tiny")      # {"tokenizer_bpe": Path, "vit300m_qwen2_hf": Path, ...}

or ``python -m sophia_tools.tiny --out DIR``. Builders write each dir under a temporary name and
rename it (atomic), stamp it with ``tiny_fixture.json`` (build parameters plus a digest of the
builder code) and reuse a dir whose stamp matches; a dir with another stamp is rebuilt.

Importing this package is light: torch, transformers, tokenizers and sentencepiece are imported
inside the builders only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

STAMP_NAME = "tiny_fixture.json"
_PACKAGE_DIR = Path(__file__).resolve().parent
# The code whose output the fixtures are: any edit to it rebuilds stamped dirs on next use.
_REPO_DIR = _PACKAGE_DIR.parent.parent
BUILDER_SOURCES = (*sorted(_PACKAGE_DIR.glob("*.py")), _REPO_DIR / "sophia_common" / "tokenizer.py",
                   _REPO_DIR / "conversion" / "hf_formats.py", _REPO_DIR / "conversion" / "families.py")

_LAZY_EXPORTS = {
    "build_tokenizer": "sophia_tools.tiny.tokenizer",
    "build_internvl": "sophia_tools.tiny.internvl",
    "build_all": "sophia_tools.tiny.internvl",
    "TINY_SHAPES": "sophia_tools.tiny.internvl",
    "build_reasoner": "sophia_tools.tiny.reasoner",
    "build_vllm_policy": "sophia_tools.tiny.vllm_policy",
}
__all__ = [*_LAZY_EXPORTS, "build_atomically", "write_json"]


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_LAZY_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented UTF-8 JSON with a trailing newline (the HF files' style)."""
    Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def builder_digest() -> str:
    """sha256 of the builder sources, so a stamp from older builder code never matches."""
    digest = hashlib.sha256()
    for path in BUILDER_SOURCES:
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _stamp_matches(out: Path, stamp: dict) -> bool:
    path = out / STAMP_NAME
    return path.is_file() and json.loads(path.read_text(encoding="utf-8")) == stamp


def build_atomically(out: str | Path, stamp: dict, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp_dir)`` and rename the result to ``out``; reuse ``out`` when its stamp matches.

    A dir is only ever published complete (by rename), so an existing ``out`` carrying the same
    stamp is reused as is; one with another stamp (older builder, other seed or dtype) is replaced.
    """
    out = Path(out)
    stamp = {"builder": builder_digest(), **stamp}
    if _stamp_matches(out, stamp):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        write(tmp)
        write_json(tmp / STAMP_NAME, stamp)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(trash / out.name)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            tmp.rename(out)
        except OSError:  # another process published the same dir first
            if not _stamp_matches(out, stamp):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
