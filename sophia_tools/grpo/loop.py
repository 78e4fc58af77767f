"""The GRPO loop: generate with the current policy, reward, update on Megatron, sync weights, repeat.

    sophia-train --config RECIPE train.mode=grpo [key=value ...]      # torchrun / SLURM ranks

Per step s (every rank runs the loop; global rank 0 holds the generator and the verifier):

1. **questions** — ``questions_per_step`` questions at positions [s·Q, (s+1)·Q) of the epoch
   permutations of ``seed`` (the packed loader's order function), so the order is a function of s;
2. **generate** (rank 0) — ``rollouts_per_question`` rollouts per question, sampled with the
   per-request seed hash(seed, "s:id"), with every token's logprob;
3. **reward** — the ``grpo.reward`` plug-in; group-relative advantages; groups with pass rate 0
   or 1 (or equal rewards) dropped and counted; the kept rollouts are broadcast to every rank;
4. **train** — one optimizer step of ``PolicyTrainer`` (clipped token-level loss), which also
   recomputes the logprobs of the sampled tokens (the ``mismatch`` metric);
5. **sync** — the trainer's weights streamed into the generator through the converter's tables
   (``grpo.generator.engine``: transformers in this process, or vLLM colocated, put to sleep
   during the update with ``grpo.vllm_sleep_mode`` and woken for the sync).

Metrics of every step go to TensorBoard and JSON lines (the trainer's sinks): reward mean, pass
rate, groups kept/dropped, response length, loss, clip fraction, entropy, KL (if on), mismatch,
and the time split generate / train / sync. Exact resume: a checkpoint holds the weights, the
optimizer and the schedule at a step boundary, and everything else (question order, rollout
seeds) is a function of the step, so the interrupted step is regenerated identically from the
resumed weights (synced into the generator before the first generation).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from sophia_common.log import get_logger
from sophia_tools.grpo.config import GrpoSection

log = get_logger("sophia.grpo")


def question_order(step: int, per_step: int, count: int, seed: int) -> list[int]:
    """Indices of the questions of ``step``: epoch e visits ``permutation(seed + e)`` (no replay to seek)."""
    import numpy as np

    out = []
    for position in range(step * per_step, (step + 1) * per_step):
        epoch, offset = divmod(position, count)
        out.append(int(np.random.default_rng(seed + epoch).permutation(count)[offset]))
    return out


def read_questions(path: str) -> list[dict[str, Any]]:
    """Rollout-input rows (validated by the rollout's reader), image paths resolved."""
    from rollout.inputs import read_inputs
    from sophia_common.cli import UserError

    inputs = read_inputs(path, check_images=False)
    if inputs.rejects:
        log.warning("%s: %d unusable rows skipped (%s)", path, len(inputs.rejects), inputs.reject_counts())
    if not inputs.rows:
        raise UserError(f"{path}: no usable question")
    return [{"id": r.id, "question": r.question, "answer": r.answer,
             "image": str(r.image) if isinstance(r.image, Path) else r.image} for r in inputs.rows]


def make_generator(grpo: GrpoSection) -> Any:
    """The generator ``grpo.generator.engine`` names: vLLM (GPU clusters; also vLLM's CPU backend) or
    transformers (CPU)."""
    if grpo.generator.engine == "vllm":
        from sophia_tools.grpo.vllm_generator import VLLMPolicyGenerator

        return VLLMPolicyGenerator(grpo.generator, max_tiles=grpo.max_tiles, sleep_mode=grpo.vllm_sleep_mode,
                                   sync_chunk_mb=grpo.sync_chunk_mb)
    from sophia_tools.grpo.generator import TransformersPolicyGenerator

    return TransformersPolicyGenerator(grpo.generator, max_tiles=grpo.max_tiles)


class Rollouts:
    """Rank 0's side: the generator, the verifier, the reward plug-in and the questions."""

    def __init__(self, grpo: GrpoSection) -> None:
        from rollout.rl_rewards import make_reward
        from rollout.verifier import VerifierPool

        self.grpo = grpo
        self.generator = make_generator(grpo)
        self.pool = VerifierPool(workers=grpo.verifier.workers, timeout_s=grpo.verifier.timeout_s)
        tokenizer = self.generator.tokenizer
        self.reward = make_reward(grpo.rewards, self.pool.verify_batch,
                                  lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"]))
        self.questions = read_questions(grpo.questions)
        self.eval_questions = read_questions(grpo.eval_questions) if grpo.eval_questions else []
        self.system = Path(grpo.system_prompt).read_text(encoding="utf-8").strip() if grpo.system_prompt else None

    def close(self) -> None:
        self.pool.close()
        self.generator.close()

    def step(self, step: int) -> tuple[list[Any], dict[str, Any], list[dict[str, Any]]]:
        """(kept PolicySamples, metrics, records to store) of one step."""
        from rollout.rl_rewards import Scored
        from sophia_megatron.train.grpo_loss import group_advantages
        from sophia_megatron.train.policy import PolicySample
        from sophia_tools.grpo.generator import question_request

        g = self.grpo
        rows = [self.questions[i] for i in question_order(step, g.questions_per_step, len(self.questions), g.seed)]
        samples, records, rewards_all, correct_all, lengths, groups = [], [], [], [], [], {}
        for row in rows:
            rollouts = self.generator.sample(question_request(row, self.system, f"{step}:{row['id']}"),
                                             n=g.rollouts_per_question, temperature=g.temperature,
                                             top_p=g.top_p, max_tokens=g.max_tokens, seed=g.seed)
            scored = self.reward([Scored(row["question"], row["answer"], r.text, r.truncated, len(r.response_ids))
                                  for r in rollouts])
            rewards, correct = [s.reward for s in scored], [s.correct for s in scored]
            advantages, reason = group_advantages(rewards, correct, g.advantage)
            groups[reason] = groups.get(reason, 0) + 1
            rewards_all += rewards
            correct_all += correct
            lengths += [len(r.response_ids) for r in rollouts]
            for i, r in enumerate(rollouts):
                records.append({"id": row["id"], "i": i, "response": r.text, "reward": rewards[i],
                                "correct": correct[i], "group": reason, "tokens": len(r.response_ids),
                                "truncated": r.truncated, "sample": None})
                if advantages is not None:
                    samples.append(PolicySample(r.prompt_ids, r.response_ids, r.logprobs, advantages[i],
                                                row["image"], g.max_tiles))
                    records[-1]["sample"] = dataclasses.asdict(samples[-1]) if isinstance(row["image"], str) \
                        or row["image"] is None else None
        metrics = {"reward_mean": _mean(rewards_all), "pass_rate": _mean([float(c) for c in correct_all]),
                   "groups_kept": groups.get("kept", 0),
                   "groups_dropped": sum(v for k, v in groups.items() if k != "kept"),
                   **{f"groups_dropped_{k}": v for k, v in sorted(groups.items()) if k != "kept"},
                   "response_tokens_mean": _mean(lengths), "response_tokens_max": max(lengths),
                   "truncated_fraction": _mean([float(r["truncated"]) for r in records])}
        return samples, metrics, records

    def pass_at_1(self) -> float:
        """pass@1 on the held-out questions by the rule verifier: the mean correctness of
        ``eval_samples`` answers per question sampled with fixed seeds (the same at every evaluation),
        or of one greedy answer when ``eval_samples`` is 0."""
        from sophia_tools.grpo.generator import question_request

        g = self.grpo
        greedy = g.eval_samples == 0
        items = []
        for row in self.eval_questions:
            answers = self.generator.sample(question_request(row, self.system, f"eval:{row['id']}"),
                                            n=1 if greedy else g.eval_samples, temperature=0.0 if greedy else
                                            g.temperature, top_p=g.top_p, max_tokens=g.eval_max_tokens, seed=g.seed)
            items += [{"response": a.text, "answer": row["answer"], "truncated": a.truncated} for a in answers]
        return _mean([float(s.correct) for s in self.pool.verify_batch(items)])


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class GrpoLoop:
    """Every rank: the Megatron policy; rank 0 also the generator side (``Rollouts``)."""

    def __init__(self, recipe: Any, grpo: GrpoSection) -> None:
        import torch.distributed as dist

        from sophia_megatron.train.policy import PolicySettings, PolicyTrainer

        settings = PolicySettings(advantage=grpo.advantage, clip_eps=grpo.clip_eps, temperature=grpo.temperature,
                                  max_tokens=grpo.max_tokens, micro_batch_tokens=grpo.micro_batch_tokens,
                                  kl_coef=grpo.kl_coef)
        self.grpo = grpo
        self.trainer = PolicyTrainer(recipe, settings)
        self.rank = dist.get_rank()
        self.rollouts, error = None, None
        if self.rank == 0:
            try:
                self.rollouts = Rollouts(grpo)
            except Exception as exc:  # every rank must learn it, or the others wait in the first sync
                error = exc
        failed = self._broadcast(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if failed:
            from sophia_common.cli import UserError

            raise UserError(f"rank 0 could not start the generator side: {failed}")
        seconds = self.sync(include_vision=True)
        log.info("generator holds the trainer's weights (step %d; sync %.2f s)", self.trainer.step, seconds)

    def sync(self, include_vision: bool = False) -> float:
        from sophia_megatron.train.weight_sync import hf_weight_stream

        started = time.perf_counter()
        t = self.trainer
        stream = hf_weight_stream(t.model, t.arch, t.pstate, spec=t.recipe.model.spec, include_vision=include_vision)
        if self.rollouts is not None:
            self.rollouts.generator.load_weights(stream)
        else:
            for _ in stream:
                pass
        return time.perf_counter() - started

    def _broadcast(self, payload: Any) -> Any:
        import torch.distributed as dist

        box = [payload]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _store_rollouts(self, step: int, records: list[dict[str, Any]]) -> None:
        save_dir = self.trainer.recipe.checkpoint.save_dir
        if self.rank == 0 and self.grpo.save_rollouts and save_dir:
            from sophia_common.atomic import write_text_atomic

            path = Path(save_dir) / "rollouts" / f"step_{step:07d}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))

    def evaluate(self) -> float | None:
        value = self.rollouts.pass_at_1() if self.rollouts is not None and self.rollouts.eval_questions else None
        return self._broadcast(value)

    def one_step(self) -> dict[str, Any]:
        step = self.trainer.step
        started = time.perf_counter()
        if self.rollouts is not None:
            samples, metrics, records = self.rollouts.step(step)
            self._store_rollouts(step, records)
        else:
            samples, metrics = None, None
        samples, metrics = self._broadcast((samples, metrics))
        generated = time.perf_counter()
        enough = len(samples) >= self.trainer.pstate.dp
        if enough and self.rollouts is not None:
            self.rollouts.generator.sleep()  # vLLM sleep mode: the update gets the accelerator's memory
        update = self.trainer.train_on(samples) if enough else self.trainer.no_update()
        trained = time.perf_counter()
        sync_seconds = self.sync() if enough else 0.0
        return {**metrics, **update, "rollouts_kept": len(samples), "generate_seconds": generated - started,
                "train_seconds": trained - generated, "sync_seconds": sync_seconds,
                "step_seconds": time.perf_counter() - started}

    def run(self) -> list[dict[str, Any]]:
        t, g = self.trainer, self.grpo
        history = []
        if t.step == 0 and g.eval_questions:
            self._write(0, {"eval_pass@1": self.evaluate()}, history)
        while t.step < g.steps:
            metrics = self.one_step()
            if g.eval_questions and ((g.eval_interval and t.step % g.eval_interval == 0) or t.step == g.steps):
                metrics["eval_pass@1"] = self.evaluate()
            self._write(t.step, metrics, history)
            if self._boundary():
                return history
        t.save()
        if t.recipe.checkpoint.export_hf:
            t.export(t.recipe.checkpoint.export_hf)
        self._close()
        return history

    def _write(self, step: int, metrics: dict[str, Any], history: list[dict[str, Any]]) -> None:
        history.append({"step": step, **metrics})
        if self.trainer.sinks:
            self.trainer.sinks.write(step, metrics)
            if "loss" in metrics:
                log.info("grpo step %d | reward %.3f | pass %.3f | kept %s | loss %s | mismatch %s | "
                         "gen %.2fs train %.2fs sync %.2fs", step, metrics["reward_mean"] or 0.0,
                         metrics["pass_rate"] or 0.0, metrics["groups_kept"], metrics["loss"],
                         metrics["mismatch"], metrics["generate_seconds"], metrics["train_seconds"],
                         metrics["sync_seconds"])

    def _boundary(self) -> bool:
        """Checkpoint at intervals; on SIGTERM/SIGUSR1 or the exit interval, checkpoint and stop."""
        t = self.trainer
        ck, steps = t.recipe.checkpoint, self.grpo.steps
        if ck.save_interval and t.step % ck.save_interval == 0 and t.step < steps:
            t.save()
        exit_interval = t.recipe.train.exit_interval
        if t._stop_everywhere() or (exit_interval and t.step % exit_interval == 0 and t.step < steps):
            log.warning("stopping at step %d (signal or exit interval): checkpointing", t.step)
            t.save()
            self._close()
            return True
        return False

    def _close(self) -> None:
        self.trainer._close_sinks()
        if self.rollouts is not None:
            self.rollouts.close()


def grpo_requested(config: str | None, overrides: list[str]) -> bool:
    from sophia_common.config import read_recipe

    return (read_recipe(config, overrides).get("train") or {}).get("mode") == "grpo"


def main_grpo(args: Any, overrides: list[str], *, launch_local: Any, under_launcher: bool) -> int:
    """``sophia-train`` in GRPO mode: start the ranks here (``launch_local``, sophia-train's) when not
    under a launcher, else run this rank."""
    import sys

    if not under_launcher:
        from sophia_common.config import read_recipe

        parallel = read_recipe(args.config, overrides).get("parallel") or {}
        ranks = args.nproc_per_node or parallel.get("world_size") or parallel.get("tp", 1) * parallel.get("pp", 1)
        if ranks > 1:
            return launch_local(sys.argv[1:] if args.argv is None else args.argv, ranks)
    from sophia_megatron.parallel import destroy_parallel

    try:
        run_grpo(args.config, overrides)
    finally:
        destroy_parallel()
    return 0


def run_grpo(config: str | None, overrides: list[str]) -> list[dict[str, Any]]:
    """``sophia-train train.mode=grpo``: load both recipes, run the loop on this rank."""
    from sophia_megatron.train.config import check_runtime, load_train_recipe
    from sophia_tools.grpo.config import grpo_train_recipe, load_grpo

    grpo = load_grpo(config, overrides)
    if grpo.generator.engine not in ("transformers", "vllm"):  # checked on every rank, before any collective
        from sophia_common.cli import UserError

        raise UserError(f"grpo.generator.engine: {grpo.generator.engine} cannot take the trainer's weights after "
                        "every update; use vllm (in-process, colocated) or transformers (CPU)")
    # GRPO's data are grpo.questions; the SOPHIA packed dataset (data.path) is not read.
    overrides = [*overrides, f"data.path={Path(grpo.questions).resolve().parent}"]
    recipe = grpo_train_recipe(load_train_recipe(config, overrides), grpo)
    check_runtime(recipe)
    return GrpoLoop(recipe, grpo).run()
