"""Worker: the GRPO update (``PolicyTrainer.train_on``) on stored rollouts, at any TP/PP; prints JSON per step.

    torchrun --nproc-per-node N train_on_rollouts.py MCORE_DIR ROLLOUT_DIR TP PP OUT.json HF_DIR

Every step's kept samples come from ``ROLLOUT_DIR/step_*.jsonl`` (written by the GRPO loop), so every
layout trains on the very same rollouts (with the loop's settings of tests/grpo/conftest.py, in several
micro-batches per step); rank 0 writes the per-step metrics to OUT.json, whether the weight sync at
this layout gave exactly the HF checkpoint (HF_DIR) before training, whether the vision tower and
projector are still exactly the checkpoint's after training, and the synced weights after training
to OUT.json.weights.pt.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from conversion.hf_formats import iter_checkpoint_tensors, normalize_hf_name
from sophia_common.config import build
from sophia_megatron.parallel import destroy_parallel
from sophia_megatron.train.config import TrainRecipe
from sophia_megatron.train.policy import PolicySample, PolicySettings, PolicyTrainer
from sophia_megatron.train.weight_sync import hf_weight_stream


def main() -> None:
    mcore, rollouts, tp, pp, out = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    hf_dir = sys.argv[6]
    recipe = build(TrainRecipe, {"model": {"mcore_dir": mcore}, "data": {"path": str(rollouts)},
                                 "parallel": {"tp": tp, "pp": pp},
                                 "train": {"mode": "grpo", "lr": 5e-4, "steps": 4, "min_lr_ratio": 1.0,
                                           "max_seq_len": 4096},
                                 "checkpoint": {"resume": False}})
    trainer = PolicyTrainer(recipe, PolicySettings(max_tokens=12, micro_batch_tokens=700))
    # The weight sync at this layout, before training: exactly the HF checkpoint the run started from.
    before = dict(hf_weight_stream(trainer.model, trainer.arch, trainer.pstate, include_vision=True))
    history = []
    for path in sorted(rollouts.glob("step_*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines()]
        samples = [PolicySample(**r["sample"]) for r in records if r.get("sample")]
        if samples:
            history.append(trainer.train_on(samples))
    after = dict(hf_weight_stream(trainer.model, trainer.arch, trainer.pstate, include_vision=True))
    if dist.get_rank() == 0:
        source = {normalize_hf_name(k): v for k, v in iter_checkpoint_tensors(hf_dir)}
        exact = set(before) == set(source) and all(torch.equal(before[k], source[k].float()) for k in source)
        torch.save(after, out + ".weights.pt")
        frozen = [k for k in source if k.startswith(("vision_tower.", "multi_modal_projector."))]
        vision_unchanged = bool(frozen) and all(torch.equal(after[k], source[k].float()) for k in frozen)
        Path(out).write_text(json.dumps({"steps": history, "sync_exact_at_start": exact,
                                         "vision_unchanged": vision_unchanged}))
    destroy_parallel()


if __name__ == "__main__":
    main()
