"""Worker: vLLM's sampled-token logprobs against the Megatron trainer's, before and after a weight sync.

    torchrun --nproc-per-node 1 vllm_sync.py MCORE_DIR HF_DIR QUESTIONS OUT.json

One Megatron policy (TP=1, fp32) and one ``VLLMPolicyGenerator`` on vLLM's CPU backend (fp32). The
start sync puts the trainer's weights into vLLM; rollouts are sampled, and the trainer recomputes
the log-probability of every sampled token (``start``). One update with hand-made advantages and a
large learning rate changes the weights; vLLM samples again without a sync (``stale``: its logprobs
are of the old weights), then after the sync (``synced``). OUT.json: the mean |trainer - vLLM| of
each, the tokens compared, and the sync's seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def mean_abs(trainer: list[list[float]], generator: list[list[float]]) -> tuple[float, int]:
    diffs = [abs(a - b) for t, g in zip(trainer, generator, strict=True) for a, b in zip(t, g, strict=True)]
    return sum(diffs) / len(diffs), len(diffs)


def main() -> None:
    mcore, hf, questions, out = sys.argv[1:5]
    from rollout.engine_api import EngineConfig
    from sophia_common.config import build
    from sophia_megatron.parallel import destroy_parallel
    from sophia_megatron.train.config import TrainRecipe
    from sophia_megatron.train.policy import PolicySample, PolicySettings, PolicyTrainer
    from sophia_megatron.train.weight_sync import hf_weight_stream
    from sophia_tools.grpo.generator import question_request
    from sophia_tools.grpo.loop import read_questions
    from sophia_tools.grpo.vllm_generator import VLLMPolicyGenerator

    recipe = build(TrainRecipe, {"model": {"mcore_dir": mcore}, "data": {"path": str(Path(questions).parent)},
                                 "train": {"mode": "grpo", "lr": 1e-2, "steps": 2, "min_lr_ratio": 1.0,
                                           "max_seq_len": 4096, "warmup_steps": 0},
                                 "checkpoint": {"resume": False}})
    trainer = PolicyTrainer(recipe, PolicySettings(max_tokens=12, micro_batch_tokens=4096))
    generator = VLLMPolicyGenerator(EngineConfig(model=hf, engine="vllm", dtype="float32", enforce_eager=True,
                                                 max_model_len=1024, max_num_seqs=8, seed=0), max_tiles=1)
    rows = read_questions(questions)[:2]

    def sync(include_vision: bool = False) -> float:
        started = time.perf_counter()
        generator.load_weights(hf_weight_stream(trainer.model, trainer.arch, trainer.pstate,
                                                include_vision=include_vision))
        return time.perf_counter() - started

    def rollouts(step: int) -> list[PolicySample]:
        samples = []
        for row in rows:
            for i, r in enumerate(generator.sample(question_request(row, None, f"{step}:{row['id']}"), n=4,
                                                   temperature=1.0, top_p=1.0, max_tokens=12, seed=0)):
                samples.append(PolicySample(r.prompt_ids, r.response_ids, r.logprobs, 1.0 if i % 2 else -1.0,
                                            row["image"], 1))
        return samples

    def mismatch(samples: list[PolicySample]) -> tuple[float, int]:
        return mean_abs(trainer.sampled_logprobs(samples), [s.gen_logprobs for s in samples])

    report = {"sync_seconds_start": sync(include_vision=True)}
    first = rollouts(0)
    report["start"] = mismatch(first)
    trainer.train_on(first)  # the weights change
    report["stale"] = mismatch(rollouts(1))
    report["sync_seconds"] = sync()
    report["synced"] = mismatch(rollouts(1))
    generator.close()
    Path(out).write_text(json.dumps(report))
    destroy_parallel()


if __name__ == "__main__":
    main()
