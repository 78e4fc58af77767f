"""The engine interface of the rollout: what a stage sends, what it gets back, how a recipe names an engine.

What: ``EngineConfig`` (the recipe keys of one generating stage), ``SamplingParams``, ``Request``
(chat messages, an optional image, a stable ``key``), ``Completion`` (text, token count, finish
reason), ``Failure`` (a request that could not be served, with a reason for the rejects table) and
the ``Engine`` base class every engine implements:

    engine.generate(requests, params) -> [[Completion, ...] | Failure, ...]    # one entry per request

Why a module of its own: the engines (``rollout.engines`` for vLLM and Transformers in-process,
``rollout.openai_engine`` for OpenAI-compatible servers) and every caller share these types; keeping
them apart from the engine implementations lets each engine module import them without cycles.
``rollout.engines`` re-exports all of them, so callers import from there.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sophia_common.config import doc

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
UNREADABLE_IMAGE = "unreadable_image"
PROMPT_TOO_LONG = "prompt_too_long"
ENGINE_ERROR = "engine_error"
TRANSFORMERS_INTERNVL = "InternVLForConditionalGeneration"


@dataclass
class EngineConfig:
    """How one stage generates: which model, which engine, how it samples."""

    model: str = doc("HF checkpoint dir (or hub id, vLLM only) of the model this stage runs; engine openai: "
                     "the local dir whose chat template and tokenizer the client uses (empty: the server's "
                     "chat template)", "")
    engine: Literal["vllm", "transformers", "openai"] = doc(
        "vllm (in-process vLLM), transformers (in-process HF generate; CPU tests) or openai (an "
        "OpenAI-compatible server, e.g. launchers/serve.sh)", "vllm")
    temperature: float = doc("sampling temperature (0: greedy, n must be 1)", 1.0)
    top_p: float = doc("nucleus sampling mass", 1.0)
    max_tokens: int = doc("most new tokens per completion; a completion cut here has finish_reason "
                          "'length'", 32768)
    seed: int | None = doc("base seed; each request samples with hash(seed, key). null: unseeded", 0)
    tp: int = doc("vLLM tensor_parallel_size (GPUs per engine)", 1)
    pp: int = doc("vLLM pipeline_parallel_size (an engine spanning nodes, e.g. DeepSeek-R1 on H100s)", 1)
    max_num_seqs: int = doc("vLLM max_num_seqs: sequences decoded concurrently", 256)
    max_model_len: int | None = doc("vLLM max_model_len (prompt + completion); null: the model's", None)
    gpu_memory_utilization: float = doc("vLLM gpu_memory_utilization", 0.9)
    enforce_eager: bool = doc("vLLM enforce_eager (no CUDA graphs / compilation; CPU tests set true)", False)
    dtype: str = doc("weights dtype: bfloat16, float16, float32 or auto", "bfloat16")
    trust_remote_code: bool = doc("let vLLM / transformers run code shipped in the checkpoint (original-"
                                  "format InternVL needs it under vLLM); never implied", False)
    base_url: str = doc("engine openai: the server, http://HOST:PORT (a trailing /v1 is fine)", "")
    endpoint_file: str = doc("engine openai: a file holding the server URL, written by launchers/serve.sh "
                             "once the server answers (used when base_url is empty)", "")
    served_model: str = doc("engine openai: the model name the server knows; empty: the one it lists", "")
    api_key_env: str = doc("engine openai: environment variable holding the API key; empty: no key", "")
    concurrency: int = doc("engine openai: requests in flight at once", 64)
    request_timeout_s: float = doc("engine openai: most seconds to wait for one answer", 3600.0)
    retries: int = doc("engine openai: retries of a request after a connection error, timeout, 429 or 5xx "
                       "(backoff 1, 2, 4 ... s, at most 30 s); a server still down then stops the stage", 3)
    wait_for_server_s: float = doc("engine openai: how long to wait at start for endpoint_file and a healthy "
                                   "server (a server job still loading its model); 0: fail at once", 0.0)

    def __post_init__(self) -> None:
        if min(self.max_tokens, self.tp, self.pp, self.max_num_seqs, self.concurrency) < 1:
            raise ValueError("max_tokens, tp, pp, max_num_seqs and concurrency must be >= 1")
        if self.retries < 0 or self.request_timeout_s <= 0 or self.wait_for_server_s < 0:
            raise ValueError("need retries >= 0, request_timeout_s > 0 and wait_for_server_s >= 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError(f"need n >= 1 and max_tokens >= 1, got {self.n}, {self.max_tokens}")
        if self.temperature == 0 and self.n > 1:
            raise ValueError("greedy decoding (temperature 0) gives one completion; set n=1")

    @classmethod
    def of(cls, config: EngineConfig, n: int) -> SamplingParams:
        return cls(n=n, temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_tokens,
                   seed=config.seed)


@dataclass(frozen=True)
class Request:
    """Chat messages (``role``/``content``); ``image`` goes before the first user turn's text."""

    messages: tuple[dict[str, str], ...]
    key: str
    image: bytes | Path | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    num_tokens: int
    finish_reason: str  # "stop" | "length" (or an engine's own, e.g. "abort")


@dataclass(frozen=True)
class Failure:
    """A request that could not be served; ``reason`` goes to the rejects table."""

    reason: str
    detail: str


RECIPE_SECTIONS = ("rollout", "grpo", "eval")


def recipe_key(role: str) -> str:
    """The recipe key of an engine's role, for error messages: ``captioner`` and ``reasoner.easy`` live
    under ``rollout.``; ``grpo.generator``, ``grpo.judge`` and ``eval.policy`` are already full keys."""
    return role if role.split(".")[0] in RECIPE_SECTIONS else f"rollout.{role}"


def request_seed(seed: int | None, key: str) -> int | None:
    """The per-request seed: stable across runs, machines and batchings (blake2b, 31 bits)."""
    if seed is None:
        return None
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def read_architectures(model: str) -> list[str]:
    """``architectures`` of a local checkpoint's config.json (no checkpoint code is run); [] if unknown."""
    path = Path(model) / "config.json"
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text()).get("architectures") or [])
    except (ValueError, OSError):
        return []


def internvl_tiling_kwargs(model: str, max_tiles: int) -> dict[str, int]:
    """vLLM ``mm_processor_kwargs`` capping InternVL's dynamic tiling at ``max_tiles`` (plus a thumbnail):
    ``max_dynamic_patch`` for the original format, ``max_patches`` for ``-hf``; {} for other models."""
    architectures = read_architectures(model)
    if "InternVLChatModel" in architectures:
        return {"max_dynamic_patch": max_tiles}
    if TRANSFORMERS_INTERNVL in architectures:
        return {"max_patches": max_tiles}
    return {}


class Engine:
    """The interface every engine implements; use as a context manager to free the model."""

    name = "engine"

    def generate(self, requests: list[Request], params: SamplingParams) -> list[list[Completion] | Failure]:
        raise NotImplementedError

    def is_fatal(self, error: Exception) -> bool:
        """True when ``error`` means the engine itself is gone (retrying request by request is futile)."""
        return False

    def close(self) -> None:
        """Release the model (GPU memory, worker processes); the engine is unusable afterwards."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def with_image_first(messages: tuple[dict[str, str], ...], image_text: str) -> list[dict[str, str]]:
    """Messages with ``image_text`` + newline put before the first user turn's text (InternVL's layout)."""
    out, placed = [], False
    for message in messages:
        if message["role"] == "user" and not placed:
            message, placed = {**message, "content": f"{image_text}\n{message['content']}"}, True
        out.append(dict(message))
    if not placed:
        raise ValueError("a request with an image needs a user message")
    return out


def load_rgb(image: bytes | Path) -> Any:
    from sophia_common.images import open_rgb

    return open_rgb(image)


