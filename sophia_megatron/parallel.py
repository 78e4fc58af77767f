"""Process-group set-up for Megatron-Core: one place that decides backend, device and seeds.

``init_parallel(tp, pp)`` reads the launcher's variables (torchrun's ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``, or SLURM's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` with
``MASTER_ADDR``/``MASTER_PORT``), initialises ``torch.distributed`` (NCCL on GPUs, gloo on
CPU with the compatibility layer of ``cpu_compat``), builds Megatron's tensor / pipeline /
data-parallel groups and seeds the model-parallel RNG streams.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ParallelState:
    rank: int
    world_size: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    device: str

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


def _launcher_env() -> tuple[int, int, int]:
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=env.get("SLURM_LOCALID", "0"))
        return rank, world, int(env.get("SLURM_LOCALID", 0))
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 2000))
    return 0, 1, 0


def check_world_size(world: int, tp: int, pp: int) -> None:
    """The ranks must tile into TP x PP model replicas (the architecture is checked by ``check_layout``)."""
    from sophia_common.cli import UserError

    if world % (tp * pp):
        lower = "parallel.pp=1" if pp > 1 else "parallel.tp=1"
        raise UserError(f"{world} rank(s) cannot hold TP={tp} x PP={pp} = {tp * pp} ranks per model replica; "
                        f"start a multiple of {tp * pp} ranks (sophia-train --nproc-per-node {tp * pp}) "
                        f"or lower the parallelism ({lower})")


def init_parallel(tp: int = 1, pp: int = 1, seed: int = 1234, timeout_minutes: int = 30) -> ParallelState:
    """Initialise torch.distributed and Megatron's model-parallel groups (idempotent)."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state as mpu
    from megatron.core import tensor_parallel

    rank, world, local_rank = _launcher_env()
    check_world_size(world, tp, pp)
    if torch.cuda.is_available():
        backend, device = "nccl", f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    else:
        from sophia_megatron import cpu_compat

        cpu_compat.activate()
        backend, device = "gloo", "cpu"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    if not mpu.model_parallel_is_initialized():
        mpu.initialize_model_parallel(tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return ParallelState(
        rank=rank, world_size=world, tp=tp, pp=pp, dp=world // (tp * pp),
        tp_rank=mpu.get_tensor_model_parallel_rank(), pp_rank=mpu.get_pipeline_model_parallel_rank(),
        dp_rank=mpu.get_data_parallel_rank(), device=device,
    )


def destroy_parallel() -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state as mpu

    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
