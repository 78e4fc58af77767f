"""The SOPHIA update loop on Megatron-Core: build, (resume,) step, log, checkpoint, export.

One ``Trainer`` per process (``torchrun`` or SLURM-native ranks). Every step reads its packs
from the loader at the step's position (so resumption is exact), runs the layout's pipeline
schedule with the reward-weighted loss (``loss.py``), skips the update when the loss is not
finite (and aborts after ``max_nonfinite_in_row`` such steps), steps AdamW and the cosine
schedule, and logs loss / lr / grad norm / tokens/s / TFLOP/s / MFU. SIGTERM and SIGUSR1
(SLURM's warning before the time limit) make it checkpoint at the next step boundary and
exit cleanly.
"""

from __future__ import annotations

import functools
import math
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from sophia_common.cli import UserError
from sophia_common.log import get_logger
from sophia_common.mcore_checkpoint import TrainingMeta
from sophia_megatron import engine
from sophia_megatron.data import MicroBatch, PackedDataset, PackStream
from sophia_megatron.train import checkpointing
from sophia_megatron.train.config import TrainRecipe
from sophia_megatron.train.loss import weighted_loss
from sophia_megatron.train.metrics import MetricSinks, device_peak_tflops, lm_flops, vision_flops

log = get_logger("sophia.train")


class NonFiniteLossError(UserError):
    """Too many consecutive non-finite losses (bad weights or data, or a diverged run): one clear line."""


def block_causal_mask(cu_seqlens: torch.Tensor, length: int) -> torch.Tensor:
    """[1, 1, L, L] bool, True = masked: causal within each sample, nothing across samples."""
    sample = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1), torch.diff(cu_seqlens.long()))
    same = sample.unsqueeze(0) == sample.unsqueeze(1)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    return ~(same & causal).view(1, 1, length, length)


def packed_seq_params(cu_seqlens: torch.Tensor) -> Any:
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = cu_seqlens.to(torch.int32).cuda()
    longest = int(torch.diff(cu_seqlens).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                           max_seqlen_q=longest, max_seqlen_kv=longest)


def packed_forward_step(data_iterator: Any, model: Any, *, spec: str, device: Any, normalization: str) -> Any:
    """Megatron forward-step function for one packed micro-batch (the trainer's and the benchmark's).

    Attention stays inside samples: THD ``PackedSeqParams`` with the TE spec, a block-diagonal
    causal mask with the local spec.
    """
    mb: MicroBatch = next(data_iterator)
    te = spec == "te"
    output = model(mb.tokens.to(device), mb.position_ids.to(device),
                   None if te else block_causal_mask(mb.cu_seqlens, mb.tokens.shape[1]).to(device),
                   labels=mb.labels.to(device),
                   pixel_values=None if mb.pixel_values is None else mb.pixel_values.to(device),
                   packed_seq_params=packed_seq_params(mb.cu_seqlens) if te else None)
    return output, functools.partial(weighted_loss, loss_weight=mb.loss_weight, cu_seqlens=mb.cu_seqlens,
                                     loss_tokens=mb.loss_tokens, normalization=normalization,
                                     loss_mask=mb.loss_mask)


class Trainer:
    def __init__(self, recipe: TrainRecipe) -> None:
        from sophia_megatron.parallel import init_parallel

        self.recipe = recipe
        self.stop_requested = False
        if recipe.checkpoint.export_hf:  # refuse before hours of training, not after
            from conversion.output import check_output_path

            check_output_path(Path(recipe.checkpoint.export_hf), recipe.checkpoint.export_force)
        for sig in (signal.SIGTERM, signal.SIGUSR1):  # first: SLURM may warn while the model builds
            signal.signal(sig, self._request_stop)
        par, tr = recipe.parallel, recipe.train
        self.pstate = init_parallel(par.tp, par.pp, seed=tr.seed)
        self.device = torch.device(self.pstate.device)
        self._build_model()
        self._build_data()
        self.step = 0
        self.nonfinite_in_row = 0
        self._maybe_resume()
        self.sinks = MetricSinks(tensorboard_dir=recipe.logging.tensorboard_dir,
                                 wandb_project=recipe.logging.wandb_project,
                                 metrics_file=recipe.logging.metrics_file,
                                 config={"recipe": repr(recipe)}) if self._is_logger() else None

    # ---- construction -------------------------------------------------------------------
    def _build_model(self) -> None:
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        from sophia_megatron.checkpoint_io import read_arch

        r, ps, tr = self.recipe, self.pstate, self.recipe.train
        from sophia_megatron.plan import training_split

        self.arch, self.meta = read_arch(r.model.mcore_dir)
        first, last = training_split(r)  # uneven pipeline split (None: even)
        self.config = engine.model_config(self.arch, tp=ps.tp, pp=ps.pp, params_dtype=r.model.params_dtype,
                                          sequence_parallel=r.parallel.sequence_parallel,
                                          recompute=r.parallel.recompute, fp8_recipe=r.fp8.recipe,
                                          fp8_bf16_layers=r.fp8.bf16_first_last_layers,
                                          first_stage_layers=first, last_stage_layers=last)
        self.model = engine.build_model(self.arch, self.config, ps, spec=r.model.spec,
                                        vision_dtype=r.model.vision_dtype, mcore_dir=r.model.mcore_dir)
        self.ddp, self.optimizer = engine.build_training(self.model, self.config, engine.OptimizerSettings(
            lr=tr.lr, weight_decay=tr.weight_decay, clip_grad=tr.clip_grad, adam_beta1=tr.adam_beta1,
            adam_beta2=tr.adam_beta2, min_lr=tr.lr * tr.min_lr_ratio, bf16=r.model.params_dtype == "bfloat16"))
        self.scheduler = OptimizerParamScheduler(
            self.optimizer, init_lr=0.0 if tr.warmup_steps else tr.lr, max_lr=tr.lr,
            min_lr=tr.lr * tr.min_lr_ratio, lr_warmup_steps=tr.warmup_steps,
            lr_decay_steps=max(tr.steps, tr.warmup_steps + 1), lr_decay_style="cosine",
            start_wd=tr.weight_decay, end_wd=tr.weight_decay, wd_incr_steps=tr.steps, wd_incr_style="constant")

    def _build_data(self) -> None:
        from sophia_common.tokenizer import load_tokenizer

        r, ps = self.recipe, self.pstate
        self.dataset = PackedDataset(r.data.path)
        tokenizer = load_tokenizer(f"{r.model.mcore_dir}/hf_files")
        self.dataset.check(tokenizer_fingerprint=tokenizer.fingerprint(), max_seq_len=r.train.max_seq_len)
        packs = r.train.packs_per_step or self._derived_packs_per_step()
        self.packs_per_step = max(ps.dp, packs - packs % ps.dp)
        pad_to = 16 if r.fp8.recipe != "none" else 1
        if self.config.sequence_parallel:
            pad_to = math.lcm(pad_to, ps.tp)
        self.stream = PackStream(self.dataset, seed=r.data.seed, packs_per_step=self.packs_per_step,
                                 dp_rank=ps.dp_rank, dp=ps.dp, pad_to=pad_to, load_pixels=ps.is_first_stage,
                                 pad_token_id=tokenizer.pad_id or 0)

    def _derived_packs_per_step(self) -> int:
        stats = self.dataset.manifest.stats
        per_pack = float(stats.get("samples_per_pack_mean") or 1.0)
        return max(1, round(self.recipe.train.global_batch_sequences / per_pack))

    def _identity(self) -> dict[str, Any]:
        r = self.recipe
        return checkpointing.run_identity(mcore_dir=r.model.mcore_dir, data=r.data.path, tp=self.pstate.tp,
                                          pp=self.pstate.pp, spec=r.model.spec, params_dtype=r.model.params_dtype,
                                          data_seed=r.data.seed, packs_per_step=self.packs_per_step,
                                          pipeline_split=[self.config.num_layers_in_first_pipeline_stage,
                                                          self.config.num_layers_in_last_pipeline_stage])

    def _maybe_resume(self) -> None:
        ck = self.recipe.checkpoint
        step = checkpointing.latest_step(ck.save_dir) if ck.resume else None
        if step is not None:
            checkpointing.check_same_run(ck.save_dir, self._identity())
            checkpointing.load_training_state(ck.save_dir, step, self.model, self.optimizer, self.scheduler)
            self.step = step
            log.info("resumed from %s at step %d", ck.save_dir, step)

    def _is_logger(self) -> bool:
        return self.pstate.rank == 0  # every metric is reduced onto all ranks; rank 0 is the one that prints

    def _request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    # ---- one step -----------------------------------------------------------------------
    def _forward_step(self, data_iterator: Any, model: Any) -> Any:
        return packed_forward_step(data_iterator, model, spec=self.recipe.model.spec, device=self.device,
                                   normalization=self.recipe.train.loss_normalization)

    def _micro_batches(self, step: int) -> list[MicroBatch]:
        batches = self.stream.micro_batches(step)
        if self.recipe.train.mode == "sft":  # warm-up: every sample weighs 1
            for mb in batches:
                mb.loss_weight = mb.loss_mask.clone()
        return batches

    def _global_loss(self, reports: list[dict[str, Any]]) -> tuple[float, float]:
        """(loss, loss tokens) of the global batch, known on every rank."""
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        if self.pstate.is_last_stage and self.pstate.tp_rank == 0:
            for report in reports:
                total += report["lm loss"].to(self.device, torch.float64)
        dist.all_reduce(total)
        numerator, denominator = total.tolist()
        return (numerator / denominator if denominator else float("nan")), denominator

    def train_step(self) -> dict[str, Any]:
        step, tr = self.step, self.recipe.train
        started = time.perf_counter()
        batches = self._micro_batches(step)
        self.optimizer.zero_grad()
        reports = engine.forward_backward(self._forward_step, iter(batches), [self.ddp],
                                          num_microbatches=len(batches),
                                          seq_length=max(mb.tokens.shape[1] for mb in batches),
                                          micro_batch_size=1)
        loss, loss_tokens = self._global_loss(reports)
        grad_norm, skipped = None, True
        if math.isfinite(loss):
            applied, grad_norm = engine.optimizer_step(self.optimizer)
            skipped = not applied
            self.nonfinite_in_row = 0
        else:
            self.nonfinite_in_row += 1
            log.warning("step %d: non-finite loss, update skipped (%d in a row)", step, self.nonfinite_in_row)
            if self.nonfinite_in_row >= tr.max_nonfinite_in_row:
                raise NonFiniteLossError(f"{self.nonfinite_in_row} consecutive non-finite losses at step {step}")
        lr = self.optimizer.param_groups[0]["lr"]
        if not skipped:
            self.scheduler.step(increment=1)
        self.step += 1
        return self._metrics(batches, loss, loss_tokens, grad_norm, skipped, lr, time.perf_counter() - started)

    def _metrics(self, batches: list[MicroBatch], loss: float, loss_tokens: float, grad_norm: float | None,
                 skipped: bool, lr: float, seconds: float) -> dict[str, Any]:
        vocab = self.model.language_model.vocab_size
        flops = sum(lm_flops(self.arch, torch.diff(mb.cu_seqlens).tolist(), mb.tokens.shape[1], vocab)
                    + (vision_flops(self.arch, mb.pixel_values.shape[0]) if mb.pixel_values is not None else 0)
                    for mb in batches)
        counts = torch.tensor([sum(mb.num_real_tokens for mb in batches), flops], dtype=torch.float64,
                              device=self.device)
        if not (self.pstate.tp_rank == 0 and self.pstate.pp_rank == 0):
            counts.zero_()
        dist.all_reduce(counts)
        tokens, total_flops = counts.tolist()
        tflops_per_gpu = total_flops / seconds / self.pstate.world_size / 1e12
        peak = device_peak_tflops(fp8=self.recipe.fp8.recipe != "none")
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm, "loss_tokens": loss_tokens, "tokens": tokens,
                "skipped": skipped, "step_seconds": seconds, "tokens_per_s": tokens / seconds,
                "tflops_per_gpu": tflops_per_gpu, "mfu": (tflops_per_gpu / peak) if peak else None,
                "packs": self.packs_per_step}

    # ---- the run ------------------------------------------------------------------------
    def _stop_everywhere(self) -> bool:
        flag = torch.tensor([1.0 if self.stop_requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def save(self) -> None:
        ck = self.recipe.checkpoint
        if ck.save_dir:
            meta = TrainingMeta(mcore_dir=self.recipe.model.mcore_dir, step=self.step, tp=self.pstate.tp,
                                pp=self.pstate.pp, data=self.recipe.data.path, identity=self._identity())
            checkpointing.save_training_state(ck.save_dir, self.step, self.model, self.optimizer,
                                              self.scheduler, meta)
            log.info("saved checkpoint at step %d to %s", self.step, ck.save_dir)

    def run(self) -> list[dict[str, Any]]:
        history = []
        ck, lg = self.recipe.checkpoint, self.recipe.logging
        while self.step < self.recipe.train.steps:
            metrics = self.train_step()
            history.append(metrics)
            if self.sinks:
                self.sinks.write(self.step, metrics)
                if self.step % lg.log_interval == 0:
                    log.info("step %d | loss %.4f | lr %.3g | grad %s | %.0f tok/s | %.3f TFLOP/s/GPU",
                             self.step, metrics["loss"], metrics["lr"], _fmt(metrics["grad_norm"]),
                             metrics["tokens_per_s"], metrics["tflops_per_gpu"])
            if ck.save_interval and self.step % ck.save_interval == 0 and self.step < self.recipe.train.steps:
                self.save()
            if self._stop_everywhere():
                # Preempted: checkpoint and leave; the requeued run resumes and exports at the real end.
                log.warning("stop requested (SIGTERM/SIGUSR1): checkpointing at step %d and exiting", self.step)
                self.save()
                self._close_sinks()
                return history
            exit_interval = self.recipe.train.exit_interval
            if exit_interval and self.step % exit_interval == 0 and self.step < self.recipe.train.steps:
                log.info("exit interval reached at step %d: checkpointing and exiting", self.step)
                self.save()
                self._close_sinks()
                return history
        self.save()
        if ck.export_hf:
            self.export(ck.export_hf)
        self._close_sinks()
        return history

    def _close_sinks(self) -> None:
        if self.sinks:
            self.sinks.close()

    def _staging(self, out_dir: str) -> Path:
        return Path(out_dir).with_name(f".{Path(out_dir).name}.mcore-staging")

    def export(self, out_dir: str) -> None:
        """Every rank's weights into a staging checkpoint, then one HF export on rank 0.

        This method owns every collective call of the export (the writers make none).
        """
        from conversion.export import mcore_to_hf

        ps, force = self.pstate, self.recipe.checkpoint.export_force
        staging = self._staging(out_dir)
        if ps.rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
        dist.barrier()  # the staging directory is fresh before anyone writes into it
        if ps.dp_rank == 0:
            checkpointing.write_rank_weights(staging, self.model, tp_rank=ps.tp_rank, pp_rank=ps.pp_rank, pp=ps.pp)
        dist.barrier()  # every model-parallel rank's weights are in
        if ps.rank == 0:
            checkpointing.write_export_meta(staging, tp=ps.tp, pp=ps.pp, source_mcore=self.recipe.model.mcore_dir,
                                            first_stage_layers=self.config.num_layers_in_first_pipeline_stage,
                                            last_stage_layers=self.config.num_layers_in_last_pipeline_stage)
            mcore_to_hf(staging, out_dir, force=force)
            shutil.rmtree(staging, ignore_errors=True)
            log.info("exported the trained model to %s", out_dir)
        dist.barrier()  # nobody leaves before the export exists


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
