"""The part of GRPO's weight sync that runs inside vLLM's worker processes.

vLLM loads this class into every worker (``vllm.LLM(worker_extension_cls=...)``), so the trainer's
process can call its methods by name through ``llm.collective_rpc``: the arguments (tensor names
and CPU tensors) travel over vLLM's own RPC channel to the engine-core process and its workers,
and ``load_hf_weights`` hands them to the model's ``load_weights``, which knows vLLM's fused and
tensor-parallel layouts (q/k/v into ``qkv_proj``, gate/up into ``gate_up_proj``, the shard of
this worker's TP rank), inside vLLM's in-place reload (see ``WeightReceiver``). Kept free of project imports: it runs in vLLM's interpreters.
"""

from __future__ import annotations

from typing import Any


def pack_tensor(tensor: Any) -> tuple[str, list[int], bytes]:
    """(dtype name, shape, raw bytes) of a CPU tensor: what vLLM's RPC carries without pickling (a
    tensor argument of ``collective_rpc`` would arrive as nested lists)."""
    import torch

    flat = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return str(tensor.dtype).removeprefix("torch."), list(tensor.shape), flat.numpy().tobytes()


def unpack_tensor(packed: Any) -> Any:
    import torch

    dtype, shape, data = packed
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(getattr(torch, dtype)).reshape(shape)


class WeightReceiver:
    """Mixed into vLLM's worker class (``self`` is the worker). One sync is ``begin_weight_sync``, any
    number of ``load_hf_weights`` chunks, ``end_weight_sync``.

    A plain ``model.load_weights`` cannot refresh a model that has served: after loading, vLLM
    turns many parameters into kernel formats (its CPU backend repacks every linear weight for
    oneDNN and drops the original). vLLM's in-place reload (``model_loader.reload``, what its own
    ``reload_weights`` runs) rebuilds each layer in checkpoint format, buffers its tensors until
    the layer is complete, then re-runs the kernel processing into the old storage; layers that
    get no tensor (the frozen vision tower after the first sync) keep their kernel tensors. The
    session keeps that open across chunks, so a layer whose tensors straddle two chunks is still
    processed once, complete.
    """

    def begin_weight_sync(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.layerwise import initialize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self.model_runner.get_model())

    def load_hf_weights(self, names: list[str], packed: list[Any]) -> int:
        """Load transformers-native ``names[i]`` <- ``unpack_tensor(packed[i])``; returns how many."""
        from vllm.config import set_current_vllm_config

        if len(names) != len(packed):
            raise ValueError(f"weight sync: {len(names)} names but {len(packed)} tensors")
        with set_current_vllm_config(self.vllm_config):
            self.model_runner.get_model().load_weights(
                [(name, unpack_tensor(p)) for name, p in zip(names, packed, strict=True)])
        return len(names)

    def end_weight_sync(self) -> None:
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(self.model_runner.get_model(), self.vllm_config.model_config)
