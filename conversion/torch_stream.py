"""Write ``torch.save``-compatible files one tensor at a time (bounded memory).

``torch.save`` pickles a whole object graph whose tensors must all be in memory at once. A
Megatron-LM torch checkpoint of a 38B model holds gigabytes per rank file, so the converter
instead declares every tensor up front (name, dtype, shape), writes the pickle with
placeholders, and then streams each tensor's bytes into the zip archive when it has been
computed. The result is the same archive ``torch.save`` writes (``data.pkl``,
``.format_version``, ``.storage_alignment``, ``byteorder``, ``data/<key>``): ``torch.load``
reads it normally, including with ``mmap=True``.

Several writers can be open at once, so one pass over the source tensors can feed every
(TP, PP) rank file: each source tensor is read once and freed once its shards are written.
"""

from __future__ import annotations

import collections
import io
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class TensorSpec:
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()


@dataclass(frozen=True)
class _StorageRef:
    key: str
    spec: TensorSpec


class _Placeholder:
    """Pickles exactly like a contiguous CPU tensor whose bytes live in ``data/<key>``."""

    def __init__(self, ref: _StorageRef) -> None:
        self.ref = ref

    def __reduce_ex__(self, protocol: int) -> Any:
        shape = self.ref.spec.shape
        stride, step = [], 1
        for dim in reversed(shape):
            stride.insert(0, step)
            step *= dim
        return (torch._utils._rebuild_tensor_v2,
                (self.ref, 0, tuple(shape), tuple(stride), False, collections.OrderedDict()))


def _storage_type(dtype: torch.dtype) -> Any:
    return getattr(torch, torch.storage._dtype_to_storage_type_map()[dtype])


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _StorageRef):
            return ("storage", _storage_type(obj.spec.dtype), obj.key, "cpu", obj.spec.numel)
        return None


class StreamingTorchWriter:
    """Declare the object with ``TensorSpec`` leaves, then ``write(path_in_obj, tensor)`` each one."""

    def __init__(self, path: str | Path, obj: Any) -> None:
        self.path = Path(path)
        self._refs: dict[str, _StorageRef] = {}
        skeleton = self._replace_specs(obj, ())
        buffer = io.BytesIO()
        _Pickler(buffer, protocol=2).dump(skeleton)
        # No CRC32 over every byte (torch.serialization.config.save.compute_crc32=False does the
        # same for torch.save): it halves the throughput and torch.load does not need it.
        self._writer = torch._C.PyTorchFileWriter(str(self.path), False)
        data = buffer.getvalue()
        self._writer.write_record("data.pkl", data, len(data))
        self._writer.write_record(".format_version", "1", 1)
        alignment = str(torch.serialization._get_storage_alignment())
        self._writer.write_record(".storage_alignment", alignment, len(alignment))
        self._writer.write_record("byteorder", sys.byteorder, len(sys.byteorder))
        self._written: set[str] = set()

    def _replace_specs(self, node: Any, path: tuple[str, ...]) -> Any:
        if isinstance(node, TensorSpec):
            ref = _StorageRef(str(len(self._refs)), node)
            self._refs["/".join(path)] = ref
            return _Placeholder(ref)
        if isinstance(node, dict):
            return {k: self._replace_specs(v, (*path, str(k))) for k, v in node.items()}
        return node

    @property
    def pending(self) -> list[str]:
        return [name for name in self._refs if name not in self._written]

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Stream the bytes of the tensor declared at ``name`` (e.g. ``"model/decoder.x.weight"``)."""
        ref = self._refs.get(name)
        if ref is None:
            raise KeyError(f"{self.path}: tensor '{name}' was not declared")
        if name in self._written:
            raise KeyError(f"{self.path}: tensor '{name}' written twice")
        if tensor.dtype != ref.spec.dtype or tuple(tensor.shape) != ref.spec.shape:
            raise ValueError(f"{self.path}: tensor '{name}' is {tensor.dtype} {tuple(tensor.shape)}, "
                             f"declared {ref.spec.dtype} {ref.spec.shape}")
        tensor = tensor.detach().cpu().contiguous()  # a dim-0 TP chunk is already contiguous: no copy
        start = tensor.storage_offset() * tensor.element_size()
        own_bytes = tensor.untyped_storage()[start:start + ref.spec.nbytes]  # a view, not a copy
        self._writer.write_record(f"data/{ref.key}", own_bytes, ref.spec.nbytes)
        self._written.add(name)

    def close(self) -> None:
        if self.pending:
            raise RuntimeError(f"{self.path}: {len(self.pending)} declared tensors were never written, "
                               f"e.g. {self.pending[0]}")
        self._writer.write_end_of_file()
