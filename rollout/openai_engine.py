"""The ``openai`` engine: a rollout stage's requests sent to an OpenAI-compatible server (``vllm serve``).

What: ``OpenAIEngine(config, role, vision)`` finds the server (``base_url``, else the URL in
``endpoint_file`` that ``launchers/serve.sh`` writes once its server answers), waits up to
``wait_for_server_s`` for it, checks it serves the model, and then answers ``generate`` like the
in-process engines (``rollout.engine_api``):

* text requests, with ``model`` a local checkpoint: the chat template is applied here with the
  model's tokenizer, exactly as the in-process vLLM engine does, and the token ids go to
  ``/v1/completions``; a prompt longer than the server's ``max_model_len`` is a
  ``prompt_too_long`` failure and ``max_tokens`` is cut to what fits (the in-process rule);
* image requests (the caption stage) and text requests without a local ``model``: the messages go
  to ``/v1/chat/completions`` and the server applies its chat template; an image travels as a PNG
  data URL before the first user turn's text (InternVL's layout). The tiling is the server's
  setting (vLLM refuses per-request processor options by default): ``launchers/serve.sh`` starts a
  captioner's server with ``--mm-processor-kwargs`` from ``rollout.captioner.max_tiles``
  (``server_mm_args``).

Every request samples with its own seed ``hash(seed, key)``; per-completion token counts come from
the server (vLLM's ``return_token_ids``) or, failing that, from the local tokenizer. A server that
stays unreachable raises ``ServerUnreachable`` (a ``UserError`` naming the URL): the stage stops,
and a rerun after the server is back resumes from the store. A request that keeps failing becomes a
``Failure`` (a reject with its reason), never a silent drop.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

from rollout.engine_api import (
    PROMPT_TOO_LONG,
    UNREADABLE_IMAGE,
    Completion,
    Engine,
    EngineConfig,
    Failure,
    Request,
    SamplingParams,
    internvl_tiling_kwargs,
    load_rgb,
    recipe_key,
    request_seed,
)
from rollout.openai_client import Choice, OpenAIClient, RequestFailure, ServerUnreachable, image_data_url
from sophia_common.cli import UserError
from sophia_common.log import get_logger

log = get_logger("sophia.rollout.openai_engine")


def server_mm_args(model: str, max_tiles: int) -> list[str]:
    """vLLM server options for image requests to ``model``: one image per prompt, tiling capped at
    ``max_tiles`` (what the in-process engine sets per ``LLM``)."""
    args = ["--limit-mm-per-prompt", json.dumps({"image": 1})]
    tiling = internvl_tiling_kwargs(model, max_tiles)
    return args + (["--mm-processor-kwargs", json.dumps(tiling)] if tiling else [])


def resolve_base_url(config: EngineConfig, role: str) -> str:
    """``base_url``, or the URL in ``endpoint_file`` (waiting up to ``wait_for_server_s`` for the file)."""
    if config.base_url:
        return config.base_url
    path, deadline = Path(config.endpoint_file), time.monotonic() + config.wait_for_server_s
    while not (path.is_file() and path.read_text().strip()):
        if time.monotonic() >= deadline:
            raise UserError(f"{recipe_key(role)}.endpoint_file: {path} does not exist (yet); is the server job "
                            "(launchers/serve.sh) running? Raise wait_for_server_s to wait for it")
        time.sleep(min(5.0, max(deadline - time.monotonic(), 0.05)))
    return path.read_text().strip().splitlines()[0].strip()


def api_key(config: EngineConfig, role: str) -> str | None:
    if not config.api_key_env:
        return None
    key = os.environ.get(config.api_key_env)
    if not key:
        raise UserError(f"{recipe_key(role)}.api_key_env: the environment variable {config.api_key_env} is not set")
    return key


class OpenAIEngine(Engine):
    """Requests to an OpenAI-compatible server; see the module docstring."""

    name = "openai"

    def __init__(self, config: EngineConfig, role: str, *, vision: bool):
        self.config, self.role, self.vision = config, role, vision
        base_url = resolve_base_url(config, role)
        self.client = OpenAIClient(base_url, api_key=api_key(config, role), model=config.served_model or None,
                                   timeout_s=config.request_timeout_s, retries=config.retries,
                                   concurrency=config.concurrency)
        served = self.client.health(wait_s=config.wait_for_server_s)
        self.tokenizer = self._load_tokenizer() if config.model else None
        log.info("%s: %s serves %s (max_model_len %s, %d requests at once)", role, self.client.base_url,
                 served, self.client.max_model_len, config.concurrency)

    def _load_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        remote = {"trust_remote_code": True} if self.config.trust_remote_code else {}
        try:
            return AutoTokenizer.from_pretrained(self.config.model, **remote)
        except (OSError, ValueError) as exc:
            raise UserError(f"{recipe_key(self.role)}.model: cannot load a tokenizer from {self.config.model} "
                            f"({exc}); point it at the served checkpoint's dir, or leave it empty") from exc

    def _body(self, request: Request, max_tokens: int) -> tuple[str, Any, int] | Failure:
        """("completions" | "chat", prompt ids or messages, max_tokens) of one request, or why it cannot go."""
        if request.image is not None:
            try:
                buffer = io.BytesIO()
                load_rgb(request.image).save(buffer, format="PNG")
            except ValueError as exc:
                return Failure(UNREADABLE_IMAGE, str(exc))
            messages: list[dict[str, Any]] = [dict(message) for message in request.messages]
            first_user = next((message for message in messages if message["role"] == "user"), None)
            if first_user is None:
                raise ValueError("a request with an image needs a user message")
            first_user["content"] = [{"type": "image_url", "image_url": {"url": image_data_url(buffer.getvalue())}},
                                     {"type": "text", "text": first_user["content"]}]
            return "chat", messages, max_tokens
        if self.tokenizer is None:
            return "chat", [dict(message) for message in request.messages], max_tokens
        text = self.tokenizer.apply_chat_template(list(request.messages), tokenize=False, add_generation_prompt=True)
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        limit = self.client.max_model_len
        if limit is not None:
            if len(ids) >= limit:
                return Failure(PROMPT_TOO_LONG, f"{len(ids)} prompt tokens, the server's max_model_len {limit}")
            max_tokens = min(max_tokens, limit - len(ids))
        return "completions", ids, max_tokens

    def generate(self, requests: list[Request], params: SamplingParams) -> list[list[Completion] | Failure]:
        results: list[list[Completion] | Failure | None] = [None] * len(requests)
        groups: dict[str, list[tuple[int, Any, int, int | None]]] = {"completions": [], "chat": []}
        for index, request in enumerate(requests):
            body = self._body(request, params.max_tokens)
            if isinstance(body, Failure):
                results[index] = body
                continue
            kind, prompt, max_tokens = body
            groups[kind].append((index, prompt, max_tokens, request_seed(params.seed, request.key)))
        for kind, entries in groups.items():
            if not entries:
                continue
            send = self.client.complete if kind == "completions" else self.client.chat
            answers = send([prompt for _, prompt, _, _ in entries], n=params.n,
                           max_tokens=[limit for _, _, limit, _ in entries], temperature=params.temperature,
                           top_p=params.top_p, seeds=[seed for _, _, _, seed in entries])
            for (index, _, _, _), answer in zip(entries, answers, strict=True):
                results[index] = self._converted(answer)
        return results  # type: ignore[return-value]

    def _converted(self, answer: list[Choice] | RequestFailure) -> list[Completion] | Failure:
        if isinstance(answer, RequestFailure):
            return Failure(answer.reason, answer.detail)
        return [Completion(choice.text, self._count(choice), choice.finish_reason) for choice in answer]

    def _count(self, choice: Choice) -> int:
        if choice.n_tokens is not None:
            return choice.n_tokens
        if self.tokenizer is None:
            raise UserError(f"{recipe_key(self.role)}: the server at {self.client.base_url} reports no token count "
                            "per completion; set model to the served checkpoint's dir so they can be counted")
        return len(self.tokenizer.encode(choice.text, add_special_tokens=False))

    def is_fatal(self, error: Exception) -> bool:
        return isinstance(error, ServerUnreachable)

    def close(self) -> None:
        self.client.close()
