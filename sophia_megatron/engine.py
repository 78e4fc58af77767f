"""The one build path of a Megatron InternVL, and the training machinery around it.

Every place that builds the model -- the trainer, ``sophia-profile train``, ``sophia-convert
verify`` and the export of a trainer checkpoint -- goes through here, so they cannot drift:

- ``model_config``: the ``TransformerConfig`` of the language backbone for a layout, dtype,
  recompute and FP8 choice (the training extras: per-token loss, variable sequence lengths);
- ``build_model``: one pipeline stage of ``InternVLModel``, optionally loaded from a converted
  checkpoint, on the rank's device;
- ``build_training``: Megatron DDP (contiguous grad buffers, fp32 grad reduction), Megatron's
  (distributed) AdamW with gradient clipping, and the schedule hooks;
- ``forward_backward`` runs the layout's pipeline schedule (no pipelining, or 1F1B) over the
  micro-batches of one global batch; ``optimizer_step`` applies the reduced gradients. The
  trainer puts its non-finite-loss check between the two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

DTYPE_NAMES = ("float32", "bfloat16")


def torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r} (choose from {', '.join(DTYPE_NAMES)})")
    return getattr(torch, name)


def model_config(arch: Any, *, tp: int, pp: int, params_dtype: str = "float32", sequence_parallel: bool = False,
                 recompute: str = "none", fp8_recipe: str = "none", fp8_bf16_layers: int = 0,
                 gpu: bool | None = None, training: bool = True, first_stage_layers: int | None = None,
                 last_stage_layers: int | None = None) -> Any:
    """The language backbone's ``TransformerConfig`` (``gpu``: the fused kernels; default: CUDA is here;
    ``first_stage_layers`` / ``last_stage_layers``: an uneven pipeline split, None for even)."""
    import torch

    from sophia_megatron.model.internvl import language_config

    gpu = torch.cuda.is_available() if gpu is None else gpu
    extra: dict[str, Any] = {}
    if training:
        # Packs differ in length, so pipeline stages exchange shapes; Megatron only allows that with
        # the alltoall MoE dispatcher setting, even for dense models.
        extra.update(calculate_per_token_loss=True, variable_seq_lengths=True, moe_token_dispatcher_type="alltoall")
    if recompute == "full":
        extra.update(recompute_granularity="full", recompute_method="uniform", recompute_num_layers=1)
    elif recompute == "selective":
        extra.update(recompute_granularity="selective")
    if fp8_recipe not in ("none", "bf16"):
        extra.update(fp8="e4m3", fp8_recipe=fp8_recipe, first_last_layers_bf16=fp8_bf16_layers > 0,
                     num_layers_at_start_in_bf16=fp8_bf16_layers, num_layers_at_end_in_bf16=fp8_bf16_layers)
    return language_config(arch, tp=tp, pp=pp, params_dtype=torch_dtype(params_dtype),
                           sequence_parallel=sequence_parallel, fusions=gpu, first_stage_layers=first_stage_layers,
                           last_stage_layers=last_stage_layers, **extra)


def build_model(arch: Any, config: Any, pstate: Any, *, spec: str = "local", vision_dtype: str | None = None,
                mcore_dir: Any = None) -> Any:
    """This rank's ``InternVLModel`` stage, loaded from ``mcore_dir`` when given, on ``pstate.device``."""
    from sophia_megatron.checkpoint_io import load_into
    from sophia_megatron.model.internvl import InternVLModel

    model = InternVLModel(arch, config, pre_process=pstate.is_first_stage, post_process=pstate.is_last_stage,
                          spec=spec, vision_dtype=None if vision_dtype is None else torch_dtype(vision_dtype))
    if mcore_dir is not None:
        load_into(model, mcore_dir, tp=pstate.tp, pp=pstate.pp, tp_rank=pstate.tp_rank, pp_rank=pstate.pp_rank,
                  spec=spec, first_stage_layers=config.num_layers_in_first_pipeline_stage,
                  last_stage_layers=config.num_layers_in_last_pipeline_stage)
    return model.to(pstate.device)


@dataclass(frozen=True)
class OptimizerSettings:
    lr: float
    weight_decay: float
    clip_grad: float
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    min_lr: float | None = None
    bf16: bool = False


def build_training(model: Any, config: Any, settings: OptimizerSettings) -> tuple[Any, Any]:
    """(DDP-wrapped model, optimizer) with the schedule hooks attached to ``config``."""
    ddp = wrap_ddp(model, config)
    optimizer = build_optimizer([ddp], lr=settings.lr, weight_decay=settings.weight_decay,
                                clip_grad=settings.clip_grad, bf16=settings.bf16, adam_beta1=settings.adam_beta1,
                                adam_beta2=settings.adam_beta2, min_lr=settings.min_lr)
    attach_schedule_hooks(config, [ddp], optimizer)
    return ddp, optimizer


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
        use_distributed_optimizer=distributed, bf16=bf16,
        params_dtype=torch_dtype("bfloat16" if bf16 else "float32"),
    )
    return get_megatron_optimizer(config, model_chunks)


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
