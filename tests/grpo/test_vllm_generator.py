"""GRPO with ``grpo.generator.engine: vllm`` on vLLM's CPU backend (real vLLM, real Megatron, fp32).

The policy is the tiny InternVL that vLLM's CPU attention accepts (``build_vllm_policy``, head_dim
64), warmed up on the demo's circle task so that GRPO groups have pass rates between 0 and 1, and
converted to Megatron. vLLM runs in its own engine process (spawned), as in production.
"""

from __future__ import annotations

import json

import pytest

from tests.grpo.conftest import grpo_recipe
from tests.grpo.test_loop import sophia_train, steps
from tests.multirank import REPO, torchrun_script

# Mean |trainer - vLLM| log-probability of the sampled tokens, fp32 on CPU. Measured: see
# docs/GRPO.md. A missing or wrong sync (the "stale" case below) is orders of magnitude above it.
MISMATCH_TOL = 1e-4
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1"}


@pytest.fixture(scope="module")
def vllm_policy(tmp_path_factory):
    pytest.importorskip("vllm")
    import torch

    from conversion.convert import hf_to_mcore
    from sophia_tools.demo.task import write_task
    from sophia_tools.grpo.warmup import warm_up
    from sophia_tools.tiny import build_vllm_policy

    root = tmp_path_factory.mktemp("grpo_vllm")
    write_task(root / "task", images=16, warmup_images=0, reasoner_samples=0, mix_samples=0, caption_prompt="x",
               seed=5)
    base = build_vllm_policy(root / "base", dtype="float32")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        warm_up(base, root / "task" / "rollout_inputs.jsonl", root / "hf", system=None, steps=80, p_correct=0.5,
                lr=5e-3, batch_size=8)
    finally:
        torch.set_num_threads(threads)
    hf_to_mcore(root / "hf", root / "mcore", tp=1, pp=1)
    return {"root": root, "hf": root / "hf", "mcore": root / "mcore",
            "questions": root / "task" / "rollout_inputs.jsonl"}


def test_sleep_mode_is_refused_on_the_cpu_backend():
    pytest.importorskip("vllm")
    from rollout.engine_api import EngineConfig
    from sophia_common.cli import UserError
    from sophia_tools.grpo.vllm_generator import VLLMPolicyGenerator

    with pytest.raises(UserError, match="grpo.vllm_sleep_mode.*CPU backend"):
        VLLMPolicyGenerator(EngineConfig(model="unused", engine="vllm"), sleep_mode=True)


@pytest.mark.slow
def test_vllm_logprobs_match_the_trainer_after_a_weight_sync(vllm_policy, tmp_path):
    out = tmp_path / "sync.json"
    torchrun_script(REPO / "tests" / "grpo" / "workers" / "vllm_sync.py", 1,
                    [str(vllm_policy["mcore"]), str(vllm_policy["hf"]), str(vllm_policy["questions"]), str(out)],
                    timeout=900, **VLLM_ENV)
    report = json.loads(out.read_text())
    (start, tokens), (stale, _), (synced, _) = report["start"], report["stale"], report["synced"]
    assert tokens >= 8
    # The start sync gives vLLM the trainer's weights: its logprobs are the trainer's recomputation.
    assert start < MISMATCH_TOL, report
    # After an update without a sync, vLLM samples from the old weights: far off. This is what a
    # missing sync, a sync into the wrong parameters or a stale prefix cache looks like.
    assert stale > 100 * MISMATCH_TOL, report
    # After the sync, vLLM holds the updated weights again.
    assert synced < MISMATCH_TOL, report
    assert report["sync_seconds"] > 0


@pytest.mark.slow
def test_grpo_runs_end_to_end_with_the_vllm_generator(vllm_policy, tmp_path, monkeypatch):
    for key, value in VLLM_ENV.items():
        monkeypatch.setenv(key, value)
    generator = {"model": str(vllm_policy["hf"]), "engine": "vllm", "dtype": "float32", "seed": 0,
                 "enforce_eager": True, "max_model_len": 1024, "max_num_seqs": 8}
    sophia_train(grpo_recipe(tmp_path, vllm_policy, steps=3, questions_per_step=4, lr=2e-3, generator=generator))
    history = steps(tmp_path)
    assert [h["step"] for h in history] == [1, 2, 3]
    trained = [h for h in history if not h["skipped"]]
    assert len(trained) >= 2, history  # the warmed-up policy keeps groups with 0 < pass rate < 1
    for h in trained:
        # Every step's rollouts come from the weights the previous update synced into vLLM.
        assert h["mismatch"] < MISMATCH_TOL, h
        assert h["sync_seconds"] > 0 and h["generate_seconds"] > 0
    assert len({h["loss"] for h in trained}) == len(trained)


class RecordingLLM:
    """Stand-in for ``vllm.LLM``'s sleep-mode calls, which need a GPU (vLLM's CPU backend has no sleep
    mode): records the order of the calls the generator makes around a weight sync."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.llm_engine = self

    def sleep(self, level: int) -> None:
        self.calls.append(("sleep", level))

    def wake_up(self, tags: list[str]) -> None:
        self.calls.append(("wake_up", tuple(tags)))

    def collective_rpc(self, method: str, args: tuple = ()) -> list[int]:
        self.calls.append((method,))
        return [len(args[0])] if args else [None]

    def reset_prefix_cache(self) -> None:
        self.calls.append(("reset_prefix_cache",))

    def reset_encoder_cache(self) -> None:
        self.calls.append(("reset_encoder_cache",))


def test_sleep_mode_wakes_the_weights_before_the_sync_and_the_kv_cache_after():
    import torch

    from sophia_tools.grpo.vllm_generator import VLLMPolicyGenerator

    generator = VLLMPolicyGenerator.__new__(VLLMPolicyGenerator)  # no engine: sleep mode needs a GPU
    generator.llm, generator.sleep_mode, generator.sleeping = RecordingLLM(), True, set()
    generator.dtype, generator.sync_chunk_bytes = torch.bfloat16, 1
    generator.sleep()
    generator.sleep()  # already asleep: once
    weights = [("language_model.model.norm.weight", torch.ones(4)), ("language_model.lm_head.weight", torch.ones(2, 4))]
    assert generator.load_weights(weights) == 2
    # Loading into sleeping weights would be lost; the KV cache comes back only after the new weights
    # are in (peak memory); caches computed by the old weights are dropped before the next generation.
    assert generator.llm.calls == [("sleep", 1), ("wake_up", ("weights",)), ("begin_weight_sync",),
                                   ("load_hf_weights",), ("load_hf_weights",), ("end_weight_sync",),
                                   ("wake_up", ("kv_cache",)), ("reset_prefix_cache",), ("reset_encoder_cache",)]
    assert generator.sleeping == set()
