"""The Megatron training machinery shared by every model we train: DDP, optimizer, one step.

``wrap_ddp`` puts a model chunk in Megatron's ``DistributedDataParallel`` (contiguous grad
buffers, fp32 grad accumulation); ``build_optimizer`` makes Megatron's (distributed)
AdamW with gradient clipping; ``train_step`` runs the pipeline schedule that fits the layout
(no pipelining, or 1F1B) over the micro-batches of one global batch and steps the optimizer.
The trainer and the multi-rank tests both use these, so what the tests check is what runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class StepResult:
    losses: list[dict[str, Any]]   # one dict per micro-batch, from the loss function (last stage)
    grad_norm: float | None
    skipped: bool                  # the optimizer skipped the update (non-finite gradients)


def wrap_ddp(model: Any, config: Any, *, distributed_optimizer: bool = True,
             grad_reduce_in_fp32: bool = True) -> Any:
    """Megatron DDP around one model chunk (no overlap: simplest, and CPU/gloo friendly)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=grad_reduce_in_fp32,
        overlap_grad_reduce=False,
        use_distributed_optimizer=distributed_optimizer,
    )
    return DistributedDataParallel(config=config, ddp_config=ddp_config, module=model)


def build_optimizer(model_chunks: list[Any], *, lr: float, weight_decay: float, clip_grad: float,
                    distributed: bool = True, bf16: bool = False, adam_beta1: float = 0.9,
                    adam_beta2: float = 0.95, adam_eps: float = 1e-8, min_lr: float | None = None) -> Any:
    """Megatron's AdamW (decoupled weight decay) over the trainable parameters of the chunks."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    config = OptimizerConfig(
        optimizer="adam", lr=lr, min_lr=lr if min_lr is None else min_lr, weight_decay=weight_decay,
        clip_grad=clip_grad,
        adam_beta1=adam_beta1, adam_beta2=adam_beta2, adam_eps=adam_eps,
        use_distributed_optimizer=distributed, bf16=bf16, params_dtype=_dtype(bf16),
    )
    return get_megatron_optimizer(config, model_chunks)


def _dtype(bf16: bool) -> Any:
    import torch

    return torch.bfloat16 if bf16 else torch.float32


def attach_schedule_hooks(config: Any, model_chunks: list[Any], optimizer: Any) -> None:
    """Let the pipeline schedule finalise grads (DP/TP all-reduces) and scale the loss."""
    from megatron.core.distributed import finalize_model_grads

    config.finalize_model_grads_func = finalize_model_grads
    config.grad_scale_func = optimizer.scale_loss
    config.no_sync_func = [chunk.no_sync for chunk in model_chunks]
    if len(model_chunks) == 1:
        config.no_sync_func = config.no_sync_func[0]


def forward_backward(forward_step: Callable, data_iterator: Iterator, model_chunks: list[Any], *,
                     num_microbatches: int, seq_length: int, micro_batch_size: int,
                     forward_only: bool = False) -> list[dict[str, Any]]:
    """Run the layout's schedule (no pipelining, or 1F1B) over the micro-batches of one step.

    Gradients end up reduced in the DDP buffers (``finalize_model_grads``); the returned list
    holds the loss function's report of each micro-batch (last pipeline stage only).
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func

    if not forward_only:
        for chunk in model_chunks:
            chunk.zero_grad_buffer()
    schedule = get_forward_backward_func()
    losses = schedule(
        forward_step_func=forward_step, data_iterator=data_iterator,
        model=model_chunks if len(model_chunks) > 1 else model_chunks[0],
        num_microbatches=num_microbatches, seq_length=seq_length,
        micro_batch_size=micro_batch_size, forward_only=forward_only,
    )
    return list(losses)


def optimizer_step(optimizer: Any) -> tuple[bool, float | None]:
    """Step the optimizer on the reduced gradients: (applied, grad norm before clipping)."""
    success, grad_norm, _ = optimizer.step()
    return bool(success), None if grad_norm is None else float(grad_norm)


def train_step(forward_step: Callable, data_iterator: Iterator, model_chunks: list[Any], optimizer: Any,
               *, num_microbatches: int, seq_length: int, micro_batch_size: int) -> StepResult:
    """One optimizer step over ``num_microbatches`` micro-batches."""
    optimizer.zero_grad()
    losses = forward_backward(forward_step, data_iterator, model_chunks, num_microbatches=num_microbatches,
                              seq_length=seq_length, micro_batch_size=micro_batch_size)
    success, grad_norm = optimizer_step(optimizer)
    return StepResult(losses=losses, grad_norm=grad_norm, skipped=not success)
