"""A tiny transformers-native InternVL policy that vLLM's CPU backend accepts (caption stage on real vLLM).

The shapes of :mod:`sophia_tools.tiny.internvl` have a language head_dim of 16, which vLLM's CPU
attention kernel rejects. This fixture is the ``vit300m_qwen2`` family (InternViT-300M-style vision
tower, Qwen2 language model, byte-level BPE tokenizer) with the language model widened to head_dim
64 (hidden 256, 4 query heads, 2 KV heads, so Megatron can shard it at TP 2 too), written in the
``-hf`` layout (``InternVLForConditionalGeneration``) by the same writer, plus what vLLM's InternVL
processor reads from real ``-hf`` checkpoints: the tokenizer config's ``extra_special_tokens``
naming ``<img>``, ``</img>``, ``<IMG_CONTEXT>`` and the video token. The prompt's image placeholder
is one ``<IMG_CONTEXT>``; vLLM expands it to ``<img>`` + 256 x ``<IMG_CONTEXT>`` + ``</img>`` per
tile. Random weights caption with random text, which is all the plumbing needs.

    from sophia_tools.tiny import build_vllm_policy
    build_vllm_policy(DIR)        # reused when DIR holds the same build
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

from sophia_common.tokenizer import fingerprint_dir
from sophia_tools.tiny import build_atomically, write_json
from sophia_tools.tiny.internvl import TINY_SHAPES, TinyShape
from sophia_tools.tiny.tokenizer import build_tokenizer

VLLM_POLICY_SHAPE: TinyShape = replace(TINY_SHAPES["vit300m_qwen2"], lm_hidden=256, lm_heads=4, lm_kv_heads=2,
                                       lm_ffn=512, lm_layers=2)
"""head_dim 256 / 4 = 64 (vLLM CPU); 2 KV heads, so Megatron can also shard it at tensor parallel 2."""
EXTRA_SPECIAL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                        "context_image_token": "<IMG_CONTEXT>", "video_token": "<quad>"}
"""InternVL's named image tokens. The tiny vocabulary has no ``<video>``; an existing special token
stands in for it (vLLM only needs the name to resolve; the caption stage sends no video)."""


def _declare_image_tokens(directory: Path) -> None:
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["extra_special_tokens"] = dict(EXTRA_SPECIAL_TOKENS)
    write_json(path, config)


def _write(tmp: Path, seed: int, dtype: str, tokenizer_dir: Path) -> None:
    from sophia_tools.tiny.internvl import _write_internvl

    _write_internvl(tmp, VLLM_POLICY_SHAPE, "hf", seed, dtype, tokenizer_dir)
    _declare_image_tokens(tmp)


def build_vllm_policy(out: str | Path, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """Build the vLLM-ready tiny InternVL policy into ``out`` (reused when built with the same settings)."""
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer_dir = build_tokenizer(Path(scratch) / "tokenizer", VLLM_POLICY_SHAPE.tokenizer)
        stamp = {"model": "vllm_policy", "seed": seed, "dtype": dtype, "spec": asdict(VLLM_POLICY_SHAPE),
                 "extra_special_tokens": EXTRA_SPECIAL_TOKENS, "tokenizer": fingerprint_dir(tokenizer_dir)}
        return build_atomically(out, stamp, lambda tmp: _write(tmp, seed, dtype, tokenizer_dir))
