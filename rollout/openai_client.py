"""A small client for OpenAI-compatible generation servers (``vllm serve``, SGLang, ...): stdlib only.

What: ``OpenAIClient(base_url, ...)`` sends ``/v1/completions`` (prompt text or token ids) and
``/v1/chat/completions`` (messages, images as data URLs) requests from a bounded pool of threads,
one kept-alive HTTP connection per thread, and answers per prompt either a list of ``Choice``
(text, finish_reason, n_tokens) or a ``RequestFailure`` (reason, detail) — never a silent drop.

Why here and why so: rollout stages, the generative judge and evaluation all talk to served models
on a cluster (a DeepSeek-R1 spans two nodes; teams run servers already). A server is treated as
replaceable: every request carries its own seed, connection errors, timeouts, 429 and 5xx are
retried with exponential backoff, and a server that stays unreachable raises one ``ServerUnreachable``
(a ``UserError`` naming the URL) instead of turning every pending request into a reject. A request
the server refuses (4xx) becomes a ``RequestFailure`` at once: ``prompt_too_long`` when it names the
context length, else ``engine_error`` (the server's configuration, retried by the next run). ``on_result(index, result)`` is called in the caller's thread as each request
finishes, so callers can store results as they arrive.

No third-party HTTP library is needed (``http.client`` + ``concurrent.futures``), so the client
runs on any machine that runs the rollout, with or without vLLM installed.
"""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from sophia_common.cli import UserError

ENGINE_ERROR = "engine_error"  # transient: the server failed, timed out or refused (retried by the next run)
PROMPT_TOO_LONG = "prompt_too_long"  # the one refusal that is the request's own fault, for good
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_CONTEXT_WORDS = ("maximum context length", "context length", "max_model_len", "too long")


class Choice(NamedTuple):
    text: str
    finish_reason: str  # "stop" | "length" | a server's own
    n_tokens: int | None  # None when the server reports no per-choice count (n > 1 without token ids)


@dataclass(frozen=True)
class RequestFailure:
    """A request that got no answer; ``reason`` is engine_error (transient) or prompt_too_long."""

    reason: str
    detail: str


class ServerUnreachable(UserError):
    """The server did not answer at all (refused / reset / no route) after every retry."""


Result = list[Choice] | RequestFailure
ResultCallback = Callable[[int, Result], None]


class _RetryableError(Exception):
    def __init__(self, detail: str, connection: bool):
        super().__init__(detail)
        self.connection = connection


def normalise_base_url(base_url: str) -> str:
    """``http://host:port`` from ``http://host:port``, ``.../`` or ``.../v1`` (the client adds ``/v1``)."""
    url = base_url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[:-3]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"base_url {base_url!r} is not an http(s)://host[:port] URL")
    return url


def image_data_url(image: bytes, mime: str = "image/png") -> str:
    """An image's bytes as a ``data:`` URL, the way OpenAI chat requests carry images."""
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"


class OpenAIClient:
    """Bounded-concurrency OpenAI-compatible requests with retries; see the module docstring."""

    def __init__(self, base_url: str, *, api_key: str | None = None, model: str | None = None,
                 timeout_s: float = 600.0, connect_timeout_s: float = 10.0, retries: int = 3,
                 backoff_s: float = 1.0, concurrency: int = 16, token_ids: bool = True):
        if concurrency < 1 or retries < 0 or timeout_s <= 0:
            raise ValueError(f"need concurrency >= 1, retries >= 0, timeout_s > 0; got {concurrency}, "
                             f"{retries}, {timeout_s}")
        self.base_url = normalise_base_url(base_url)
        parts = urlsplit(self.base_url)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname or "", parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")
        self.api_key, self.model = api_key, model
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.retries, self.backoff_s, self.concurrency = retries, backoff_s, concurrency
        self.token_ids = token_ids  # ask for vLLM's per-choice token ids (exact counts); off for strict servers
        self.max_model_len: int | None = None
        self._local = threading.local()
        self._stop = threading.Event()

    # ------------------------------------------------------------ connection

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = kind(self._host, self._port, timeout=self.connect_timeout_s)
            self._local.connection = connection
        return connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        self._local.connection = None

    def _once(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        """One HTTP exchange; connection trouble raises ``_RetryableError(connection=True)``."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        for fresh_try in (False, True):
            connection = self._connection()
            reused = connection.sock is not None
            try:
                if not reused:
                    connection.connect()
                    connection.sock.settimeout(self.timeout_s)
                connection.request(method, self._prefix + path, body=data, headers=headers)
                response = connection.getresponse()
                return response.status, response.read()
            except TimeoutError as exc:
                self._drop_connection()
                raise _RetryableError(f"no answer within {self.timeout_s:g} s ({exc})", connection=False) from exc
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                if reused and not fresh_try:
                    continue  # the server closed an idle kept-alive connection: reconnect once at no cost
                raise _RetryableError(f"{type(exc).__name__}: {exc}", connection=True) from exc
        raise AssertionError("unreachable")

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """JSON answer of ``path``; retries transient trouble, then raises or returns a failure."""
        last: _RetryableError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                if self._stop.wait(min(self.backoff_s * 2 ** (attempt - 1), 30.0)):
                    break
            try:
                status, payload = self._once(method, path, body)
            except _RetryableError as exc:
                last = exc
                continue
            if status < 300:
                return json.loads(payload)
            detail = f"HTTP {status} from {self.base_url}{path}: {payload[:500].decode(errors='replace')}"
            if status in _RETRY_STATUS:
                last = _RetryableError(detail, connection=False)
                continue
            lowered = detail.lower()
            # Any other refusal is taken as the server's configuration (a missing option, a wrong model
            # name): transient, so the rerun after fixing the server retries it.
            reason = PROMPT_TOO_LONG if any(word in lowered for word in _CONTEXT_WORDS) else ENGINE_ERROR
            return RequestFailure(reason, detail)
        assert last is not None or self._stop.is_set()
        if last is None or last.connection:
            raise ServerUnreachable(f"the OpenAI-compatible server at {self.base_url} does not answer "
                                    f"({last or 'stopped'}) after {self.retries + 1} attempts; start it "
                                    "(launchers/serve.sh) or fix base_url / endpoint_file")
        return RequestFailure(ENGINE_ERROR, f"{last} (after {self.retries + 1} attempts)")

    # ------------------------------------------------------------ public

    def health(self, wait_s: float = 0.0) -> str:
        """The served model's name (``/v1/models``); waits up to ``wait_s`` for a starting server.

        Raises ``ServerUnreachable`` naming the URL when nothing answers, and ``UserError`` when the
        server does not serve ``model``.
        """
        deadline = time.monotonic() + wait_s
        while True:
            try:
                status, payload = self._once("GET", "/v1/models", None)
                if status < 300:
                    break
                problem = f"HTTP {status}: {payload[:200].decode(errors='replace')}"
            except _RetryableError as exc:
                problem = str(exc)
            if time.monotonic() >= deadline:
                raise ServerUnreachable(f"cannot reach the OpenAI-compatible server at {self.base_url} "
                                        f"({problem}); start it (launchers/serve.sh) or fix base_url / "
                                        "endpoint_file")
            time.sleep(min(2.0, max(deadline - time.monotonic(), 0.05)))
        cards = json.loads(payload).get("data") or []
        names = [card.get("id") for card in cards]
        if self.model is None:
            if not names:
                raise UserError(f"the server at {self.base_url} lists no model")
            self.model = names[0]
        elif self.model not in names:
            raise UserError(f"the server at {self.base_url} serves {names}, not {self.model!r}; set "
                            "served_model to one of them")
        card = cards[names.index(self.model)]
        if isinstance(card.get("max_model_len"), int):
            self.max_model_len = card["max_model_len"]
        return self.model

    def complete(self, prompts: Sequence[str | list[int]], n: int = 1, max_tokens: int | Sequence[int] = 1024,
                 temperature: float = 1.0, top_p: float = 1.0, seeds: Sequence[int | None] | None = None,
                 on_result: ResultCallback | None = None, **extra: Any) -> list[Result]:
        """``/v1/completions`` for each prompt (text, or token ids sent as they are)."""
        bodies = [{"prompt": prompt} for prompt in prompts]
        return self._generate("/v1/completions", bodies, n, max_tokens, temperature, top_p, seeds,
                              on_result, extra)

    def chat(self, conversations: Sequence[list[dict[str, Any]]], n: int = 1,
             max_tokens: int | Sequence[int] = 1024, temperature: float = 1.0, top_p: float = 1.0,
             seeds: Sequence[int | None] | None = None, on_result: ResultCallback | None = None,
             **extra: Any) -> list[Result]:
        """``/v1/chat/completions`` for each conversation (OpenAI message dicts; the server's template)."""
        bodies = [{"messages": messages} for messages in conversations]
        return self._generate("/v1/chat/completions", bodies, n, max_tokens, temperature, top_p, seeds,
                              on_result, extra)

    def close(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------ fan-out

    def _generate(self, path: str, bodies: list[dict[str, Any]], n: int, max_tokens: int | Sequence[int],
                  temperature: float, top_p: float, seeds: Sequence[int | None] | None,
                  on_result: ResultCallback | None, extra: dict[str, Any]) -> list[Result]:
        if self.model is None:
            self.health()
        seeds = list(seeds) if seeds is not None else [None] * len(bodies)
        limits = [max_tokens] * len(bodies) if isinstance(max_tokens, int) else list(max_tokens)
        if len(seeds) != len(bodies) or len(limits) != len(bodies):
            raise ValueError(f"{len(bodies)} prompts but {len(seeds)} seeds and {len(limits)} max_tokens")
        for body, seed, limit in zip(bodies, seeds, limits, strict=True):
            body.update(model=self.model, n=n, max_tokens=limit, temperature=temperature, top_p=top_p, **extra)
            if self.token_ids:
                body["return_token_ids"] = True
            if seed is not None:
                body["seed"] = seed
        results: list[Result | None] = [None] * len(bodies)
        self._stop.clear()
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(len(bodies), 1)),
                                thread_name_prefix="openai") as pool:
            pending = {pool.submit(self._one, path, body): index for index, body in enumerate(bodies)}
            try:
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        index = pending.pop(future)
                        results[index] = future.result()
                        if on_result is not None:
                            on_result(index, results[index])
            except BaseException:
                self._stop.set()  # in-flight retries give up; queued requests are cancelled
                for future in pending:
                    future.cancel()
                raise
        return results  # type: ignore[return-value]

    def _one(self, path: str, body: dict[str, Any]) -> Result:
        if self._stop.is_set():
            return RequestFailure(ENGINE_ERROR, "cancelled")
        answer = self._request("POST", path, body)
        if isinstance(answer, RequestFailure):
            return answer
        return parse_choices(answer, body["n"])


def parse_choices(answer: dict[str, Any], n: int) -> Result:
    """``Choice``s of a completions or chat answer in index order, or why the answer is unusable."""
    choices = sorted(answer.get("choices") or [], key=lambda choice: choice.get("index", 0))
    if len(choices) != n:
        return RequestFailure(ENGINE_ERROR, f"the server returned {len(choices)} choices, asked for {n}")
    completion_tokens = (answer.get("usage") or {}).get("completion_tokens")
    out = []
    for choice in choices:
        text = choice.get("text")
        if text is None:
            text = (choice.get("message") or {}).get("content") or ""
        token_ids = choice.get("token_ids")
        count = len(token_ids) if isinstance(token_ids, list) else completion_tokens if n == 1 else None
        out.append(Choice(text, choice.get("finish_reason") or "stop", count))
    return out
