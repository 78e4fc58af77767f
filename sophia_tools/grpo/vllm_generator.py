"""The GRPO generator on vLLM (``grpo.generator.engine: vllm``), colocated with the trainer.

``VLLMPolicyGenerator`` is the rollout's ``VLLMEngine`` (same prompt rendering, image tiling,
per-request seeds ``request_seed(seed, key)``) with the two methods the GRPO loop needs, the same
as the transformers generator's:

* ``sample(request, n, ...)``: n rollouts with their prompt token ids (as vLLM expanded the image
  placeholder), sampled token ids (the stop token included) and the log-probability of every
  sampled token. vLLM runs with ``logprobs_mode="processed_logprobs"`` and ``logprobs=0``: the
  sampled token's log-probability under the distribution it was drawn from, after the temperature
  (vLLM's default, ``raw_logprobs``, ignores the temperature). With ``top_p < 1`` that
  distribution is renormalised over the nucleus, while the trainer scores the full softmax: keep
  ``grpo.top_p: 1`` (the recipes do) or read ``mismatch`` accordingly.
* ``load_weights(named)``: the weight sync. The stream of transformers-native tensors is cut into
  chunks of about ``sync_chunk_mb`` and each chunk goes to every vLLM worker by
  ``llm.collective_rpc("load_hf_weights", ...)`` (``sophia_tools.grpo.vllm_worker``), where the
  model's own ``load_weights`` fuses and shards it inside vLLM's in-place reload (which re-runs
  the kernel-format processing of every refreshed layer); then the prefix cache and the
  encoder cache are reset, since a cached prompt's KV and a cached image's embeddings were
  computed by the old weights.

Colocated, not on separate rollout nodes: a separate rollout partition would sit idle during the
update and the trainer's during generation, and the 38B policy in bf16 fits next to the trainer's
TP=8 shards. With ``grpo.vllm_sleep_mode`` (GPU only; vLLM's CPU backend has no sleep mode)
``sleep()`` after generation moves vLLM's weights to host memory and drops its KV cache so the
update gets the GPU memory, and ``load_weights`` wakes the weights up, loads the new ones and then
re-allocates the KV cache.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from rollout.engine_api import FINISH_LENGTH, EngineConfig, Failure, Request, SamplingParams
from rollout.engines import VLLMEngine
from sophia_common.cli import UserError
from sophia_common.log import get_logger
from sophia_tools.grpo.generator import Rollout, plain_torch_factories

log = get_logger("sophia.grpo")
WORKER_EXTENSION = "sophia_tools.grpo.vllm_worker.WeightReceiver"


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMPolicyGenerator(VLLMEngine):
    """vLLM with sampled-token logprobs, weight sync by RPC and optional sleep mode (see module doc)."""

    def __init__(self, config: EngineConfig, *, max_tiles: int = 1, sleep_mode: bool = False,
                 sync_chunk_mb: int = 512) -> None:
        if sleep_mode and _on_cpu():
            raise UserError("grpo.vllm_sleep_mode is true but vLLM runs on its CPU backend, which has no sleep "
                            "mode; set grpo.vllm_sleep_mode=false (CPU) or run on GPUs")
        # Spawned (not forked) engine processes: the trainer's process holds gloo/NCCL state and threads.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        self.sleep_mode = sleep_mode
        self.sleeping: set[str] = set()  # vLLM memory tags asleep: "weights", "kv_cache"
        self.sync_chunk_bytes = max(1, sync_chunk_mb) << 20
        options = {"logprobs_mode": "processed_logprobs", "worker_extension_cls": WORKER_EXTENSION}
        if sleep_mode:
            options["enable_sleep_mode"] = True
        with plain_torch_factories():
            super().__init__(config, "grpo.generator", vision=True, max_tiles=max_tiles, extra_options=options)
        self.dtype = self.llm.llm_engine.model_config.dtype

    def sample(self, request: Request, *, n: int, temperature: float, top_p: float, max_tokens: int,
               seed: int | None) -> list[Rollout]:
        """``n`` rollouts of one request (greedy when ``temperature`` is 0, then ``n`` must be 1)."""
        self.wake_up()
        prepared = self.prepare(request, SamplingParams(n=n, temperature=temperature, top_p=top_p,
                                                        max_tokens=max_tokens, seed=seed))
        if isinstance(prepared, Failure):
            raise ValueError(f"{request.key}: {prepared.reason} ({prepared.detail})")
        prompt, sampling = prepared
        sampling.logprobs = 0  # the sampled token's log-probability only
        with plain_torch_factories():
            (output,) = self.llm.generate([prompt], [sampling], use_tqdm=False)
        prompt_ids = list(output.prompt_token_ids)
        rollouts = []
        for c in output.outputs:
            ids = list(c.token_ids)
            if c.logprobs is None or len(c.logprobs) != len(ids):
                raise RuntimeError(f"{request.key}: vLLM returned {len(ids)} tokens but "
                                   f"{0 if c.logprobs is None else len(c.logprobs)} logprobs")
            logprobs = [float(step[token].logprob) for step, token in zip(c.logprobs, ids, strict=True)]
            rollouts.append(Rollout(prompt_ids, ids, logprobs, c.text, truncated=c.finish_reason == FINISH_LENGTH))
        return rollouts

    def sleep(self) -> None:
        """Free the accelerator for the update (level 1: weights to host memory, KV cache dropped);
        no-op without sleep mode."""
        if self.sleep_mode and not self.sleeping:
            self.llm.sleep(level=1)
            self.sleeping = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> None:
        """Re-allocate ``tags`` (all that sleep when None)."""
        waking = self.sleeping if tags is None else self.sleeping & set(tags)
        if waking:
            self.llm.wake_up(sorted(waking))
            self.sleeping -= waking

    def load_weights(self, named: Iterable[tuple[str, Any]]) -> int:
        """Send the stream to every vLLM worker in chunks of about ``sync_chunk_mb``; returns the count."""
        from conversion.hf_formats import to_prefixed_hf_name
        from sophia_tools.grpo.vllm_worker import pack_tensor

        self.wake_up(["weights"])  # the KV cache comes back after the new weights are in
        names, tensors, size, count = [], [], 0, 0
        started = time.perf_counter()
        self.llm.collective_rpc("begin_weight_sync")
        for name, tensor in named:
            names.append(to_prefixed_hf_name(name))
            tensors.append(pack_tensor(tensor.to(self.dtype)))  # vLLM's dtype: half the bytes of fp32 in bf16
            size += len(tensors[-1][2])
            if size >= self.sync_chunk_bytes:
                count += self._send(names, tensors)
                names, tensors, size = [], [], 0
        if names:
            count += self._send(names, tensors)
        self.llm.collective_rpc("end_weight_sync")
        self.wake_up(["kv_cache"])
        self.llm.reset_prefix_cache()  # KV computed by the old weights
        self.llm.llm_engine.reset_encoder_cache()  # image embeddings of the old vision weights
        log.debug("weight sync: %d tensors into vLLM in %.2f s", count, time.perf_counter() - started)
        return count

    def _send(self, names: list[str], tensors: list[Any]) -> int:
        loaded = self.llm.collective_rpc("load_hf_weights", args=(names, tensors))
        if any(n != len(names) for n in loaded):
            raise RuntimeError(f"weight sync: vLLM workers loaded {loaded} of {len(names)} tensors")
        return len(names)
