"""The GRPO generator: samples rollouts with the current policy and reports each token's logprob.

``TransformersPolicyGenerator`` extends the rollout's Transformers engine (same prompt layout,
image tiling, per-request seeds ``request_seed(seed, key)``) with what GRPO needs beyond text:

* ``sample(question, n, seed)``: n rollouts of one question, each with its prompt token ids, its
  sampled token ids (up to and including the stop token) and log μ(y_t) of every sampled token
  under the sampling distribution softmax(logits / T) (before top-p truncation, so trainer and
  generator compute the same quantity);
* ``load_weights(named)``: copy transformers-native ``(name, tensor)`` pairs (the weight sync's
  stream) into the model's parameters, in place.

``sophia_tools.grpo.vllm_generator`` implements the same methods on vLLM (GPU clusters). This one is
used on CPU (tests, demo) and for small models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from rollout.engine_api import EngineConfig, Request, request_seed
from rollout.engines import TransformersEngine


@dataclass
class Rollout:
    prompt_ids: list[int]
    response_ids: list[int]
    logprobs: list[float]
    text: str
    truncated: bool


def question_request(row: dict[str, Any], system_prompt: str | None, key: str) -> Request:
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": row["question"]}]
    return Request(messages=tuple(messages), key=key, image=row.get("image"))


@contextlib.contextmanager
def plain_torch_factories() -> Iterator[None]:
    """Undo, for the duration, the CPU compatibility layer's wrappers of torch's tensor factories.

    On a CPU host the trainer activates ``sophia_megatron.cpu_compat`` in the same process, which
    replaces ``torch.tensor`` & co. with Python wrappers (``functools.wraps``, so the original is
    ``__wrapped__``). A transformers 5.19 InternVL loaded by ``from_pretrained`` while any Python
    wrapper replaces ``torch.tensor`` (even a pass-through one) generates broken text (the tiny
    InternVL: "The answer}." instead of "The answer is \\boxed{red}."); loading and sampling
    with the original factories gives the same text as a process without Megatron. The exact
    transformers code path is not pinned down yet. Nothing else runs meanwhile (one thread).
    """
    import torch

    saved = {}
    for name in ("tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn", "randint", "randperm",
                 "linspace", "as_tensor", "eye"):
        wrapper = getattr(torch, name)
        code = getattr(wrapper, "__code__", None)
        if hasattr(wrapper, "__wrapped__") and code is not None and code.co_filename.endswith("cpu_compat.py"):
            saved[name] = wrapper
            setattr(torch, name, wrapper.__wrapped__)
    try:
        yield
    finally:
        for name, wrapper in saved.items():
            setattr(torch, name, wrapper)


class TransformersPolicyGenerator(TransformersEngine):
    """HF ``generate`` with logprobs and in-place weight loading (see module doc)."""

    def __init__(self, config: EngineConfig, *, max_tiles: int = 1) -> None:
        with plain_torch_factories():
            super().__init__(config, "grpo.generator", vision=True, max_tiles=max_tiles)
        from conversion.hf_formats import normalize_hf_name

        self._by_hf_name = {normalize_hf_name(name): name for name in self.model.state_dict()}

    def load_weights(self, named: Iterable[tuple[str, Any]]) -> int:
        """Copy the tensors into the model; returns how many were loaded (unknown names raise)."""
        state = self.model.state_dict()
        count = 0
        with self._torch.no_grad():
            for name, tensor in named:
                key = self._by_hf_name.get(name)
                if key is None:
                    raise KeyError(f"weight sync: the generator has no parameter '{name}'")
                target = state[key]
                if tuple(target.shape) != tuple(tensor.shape):
                    raise ValueError(f"weight sync: '{name}' has shape {tuple(tensor.shape)}, "
                                     f"the generator expects {tuple(target.shape)}")
                target.copy_(tensor.to(target.dtype))
                count += 1
        return count

    def sleep(self) -> None:
        """Nothing to free before the update (vLLM's generator frees its memory here)."""

    def sample(self, request: Request, *, n: int, temperature: float, top_p: float, max_tokens: int,
               seed: int | None) -> list[Rollout]:
        """``n`` rollouts of one request (greedy when ``temperature`` is 0, then ``n`` must be 1)."""
        with plain_torch_factories():
            return self._sample(request, n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                seed=seed)

    def _sample(self, request: Request, *, n: int, temperature: float, top_p: float, max_tokens: int,
                seed: int | None) -> list[Rollout]:
        torch = self._torch
        inputs = self._inputs(request)
        if not isinstance(inputs, dict):
            raise ValueError(f"{request.key}: {inputs.reason} ({inputs.detail})")
        request_rng = request_seed(seed, request.key)
        if request_rng is not None:
            torch.manual_seed(request_rng)
        greedy = temperature == 0
        sampling = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature,
                                                        "top_p": top_p, "top_k": 0}
        with torch.inference_mode():
            out = self.model.generate(**inputs, **sampling, max_new_tokens=max_tokens, num_return_sequences=n,
                                      pad_token_id=self.pad_id, eos_token_id=sorted(self.stop_ids),
                                      output_logits=True, return_dict_in_generate=True)
        prompt = inputs["input_ids"][0].tolist()
        steps = torch.stack(out.logits, dim=1).float()  # [n, new, vocab]
        logprobs = torch.log_softmax(steps / (1.0 if greedy else temperature), dim=-1)
        rollouts = []
        for j in range(n):
            new = out.sequences[j, len(prompt):].tolist()
            stop = next((i for i, t in enumerate(new) if t in self.stop_ids), None)
            kept = new[:max_tokens] if stop is None else new[:stop + 1]
            chosen = [float(logprobs[j, i, t]) for i, t in enumerate(kept)]
            rollouts.append(Rollout(prompt, kept, chosen, self.tokenizer.decode(kept, skip_special_tokens=True),
                                    truncated=stop is None))
        return rollouts
