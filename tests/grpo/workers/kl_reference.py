"""Worker: the KL-to-reference option of the GRPO update (``grpo.kl_coef > 0``) on a hand-made text batch.

    torchrun --nproc-per-node 1 kl_reference.py MCORE_DIR OUT.json

Step 1 trains on 4 fixed token sequences with advantages +1/-1 (the reference is the start policy,
so its KL must be exactly 0); step 2 trains on the same tokens with advantages 0 (the loss is then
the KL term alone). Between and around them the trainer's forward-only ``sampled_logprobs`` gives
log π of every response token at the start weights (the reference) and before step 2, from which
OUT.json carries the k3 estimate, the reversed k3 and k1 computed here, next to what the trainer
reported.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

KL_COEF = 0.5


def estimates(ref: list[list[float]], cur: list[list[float]]) -> dict[str, float]:
    """Token means of k3 = e^(ref-cur) - (ref-cur) - 1, its reversal, and k1 = cur - ref."""
    pairs = [(r, c) for rs, cs in zip(ref, cur, strict=True) for r, c in zip(rs, cs, strict=True)]
    k3 = [math.exp(r - c) - (r - c) - 1 for r, c in pairs]
    reverse = [math.exp(c - r) - (c - r) - 1 for r, c in pairs]
    return {"k3": sum(k3) / len(pairs), "k3_reversed": sum(reverse) / len(pairs),
            "k1": sum(c - r for r, c in pairs) / len(pairs), "tokens": len(pairs)}


def main() -> None:
    mcore, out = sys.argv[1], sys.argv[2]
    import torch

    from sophia_common.config import build
    from sophia_megatron.parallel import destroy_parallel
    from sophia_megatron.train.config import TrainRecipe
    from sophia_megatron.train.policy import PolicySample, PolicySettings, PolicyTrainer

    recipe = build(TrainRecipe, {"model": {"mcore_dir": mcore}, "data": {"path": str(Path(out).parent)},
                                 "train": {"mode": "grpo", "lr": 2e-2, "steps": 2, "min_lr_ratio": 1.0,
                                           "max_seq_len": 256, "warmup_steps": 0},
                                 "checkpoint": {"resume": False}})
    trainer = PolicyTrainer(recipe, PolicySettings(max_tokens=8, micro_batch_tokens=4096, kl_coef=KL_COEF))
    rng = torch.Generator().manual_seed(0)
    sequences = [torch.randint(10, 200, (11,), generator=rng).tolist() for _ in range(4)]

    def batch(advantages: list[float]) -> list[PolicySample]:
        draft = [PolicySample(s[:6], s[6:], [0.0] * 5, a) for s, a in zip(sequences, advantages, strict=True)]
        on_policy = trainer.sampled_logprobs(draft)  # the generator's logprobs = the current policy's
        return [PolicySample(d.prompt_ids, d.response_ids, lp, d.advantage) for d, lp in zip(draft, on_policy,
                                                                                              strict=True)]

    first = batch([1.0, -1.0, 1.0, -1.0])
    reference = [s.gen_logprobs for s in first]
    step1 = trainer.train_on(first)
    second = batch([0.0] * 4)
    step2 = trainer.train_on(second)
    report = {"step1": {k: step1[k] for k in ("kl", "loss")}, "step2": {k: step2[k] for k in ("kl", "loss")},
              "expected": estimates(reference, [s.gen_logprobs for s in second]), "kl_coef": KL_COEF}
    Path(out).write_text(json.dumps(report))
    destroy_parallel()


if __name__ == "__main__":
    main()
