"""Make Megatron-Core run on CPU with gloo, for tests and the demo. Never active on a GPU.

Megatron-Core assumes CUDA in a handful of places that have nothing to do with the maths.
On a host without CUDA, ``activate()`` neutralises exactly these (docs/ARCHITECTURE.md, "Megatron on CPU"):

1. ``torch.cuda.current_device()`` used as a device -> the CPU device;
2. tensor factories with a hard-coded ``device="cuda"`` (schedules, optimizer, grad
   clipping, DDP buffers) -> allocate on the CPU; ``Tensor.cuda()`` / ``Module.cuda()`` are
   identities;
3. the CUDA RNG tracker (``CudaRNGStatesTracker.add/fork``) -> the same named-state tracker
   over the CPU generator, so model-parallel dropout streams still differ per TP rank;
4. ``Tensor.type()`` string checks against ``torch.cuda.FloatTensor`` (optimizer, grad
   clipping) -> CPU tensors report their CUDA type name;
5. ``torch.cuda.synchronize()`` (timers, checkpointing) -> a no-op.

``activate()`` refuses to run when CUDA is available, so a GPU job can never be affected
by it; it is idempotent. Everything else (the model, DDP, the distributed optimizer, the
pipeline schedules, dist_checkpointing) is Megatron's own code, unmodified.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

_ACTIVE = False
_FACTORIES = ("tensor", "zeros", "ones", "empty", "full", "arange", "rand", "randn",
              "randint", "randperm", "linspace", "as_tensor", "eye")


def _is_cuda_device(device: Any) -> bool:
    import torch

    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


def _cpu_factory(factory: Any) -> Any:
    @functools.wraps(factory)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return factory(*args, **kwargs)

    return wrapper


def _patch_devices(torch: Any) -> None:
    for name in _FACTORIES:
        setattr(torch, name, _cpu_factory(getattr(torch, name)))
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda *args, **kwargs: None
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self

    original_to = torch.Tensor.to

    def to(self: Any, *args: Any, **kwargs: Any) -> Any:
        if args and _is_cuda_device(args[0]):
            args = ("cpu", *args[1:])
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return original_to(self, *args, **kwargs)

    torch.Tensor.to = to


def _patch_type_strings(torch: Any) -> None:
    original_type = torch.Tensor.type

    def type_(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original_type(self, *args, **kwargs)
        if not args and not kwargs and isinstance(result, str) and result.startswith("torch."):
            return result.replace("torch.", "torch.cuda.", 1)
        return result

    torch.Tensor.type = type_


def _patch_rng_tracker(torch: Any) -> None:
    from megatron.core.tensor_parallel import random as mrandom

    def add(self: Any, name: str, seed: int) -> None:
        self._is_initialized = True
        if seed in self.seeds_:
            raise Exception(f"seed {seed} already exists")
        if name in self.states_:
            raise Exception(f"rng state {name} already exists")
        self.seeds_.add(seed)
        generator = torch.Generator()
        generator.manual_seed(seed)
        self.states_[name] = generator.get_state()

    @contextlib.contextmanager
    def fork(self: Any, name: str = mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Any:
        if name not in self.states_:
            raise Exception(f"rng state {name} is not added")
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer)

    mrandom.CudaRNGStatesTracker.add = add
    mrandom.CudaRNGStatesTracker.fork = fork
    # Megatron seeds the CUDA generator directly in a few places; on CPU that is the default one.
    torch.cuda.manual_seed = lambda seed: None
    torch.cuda.manual_seed_all = lambda seed: None


def activate() -> bool:
    """Switch the compatibility layer on (CPU-only hosts). Returns True once it is active."""
    global _ACTIVE
    import torch

    if torch.cuda.is_available():
        raise RuntimeError("sophia_megatron.cpu_compat is for CPU-only hosts; CUDA is available here")
    if _ACTIVE:
        return True
    _patch_devices(torch)
    _patch_type_strings(torch)
    _patch_rng_tracker(torch)
    _ACTIVE = True
    return True

