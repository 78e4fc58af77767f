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

``write_ranges`` stores a tensor whose bytes are stretches of other files (a TP piece is rows of
the safetensors shards) without bringing them into this process: torch's zip writer is given a
placeholder of the right size that is never touched, and when it hands those bytes to the file
sink, the sink copies the file ranges inside the kernel (``os.sendfile``, as a plain file copy
does) instead. Headers and ordinary tensors go through the same sink with ``os.write``.
"""

from __future__ import annotations

import collections
import io
import mmap
import os
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


@dataclass(frozen=True)
class FileRange:
    """``nbytes`` bytes of the open file ``fd`` from ``offset``; ``fd`` None: that many zero bytes."""

    fd: int | None
    offset: int
    nbytes: int


class _FileSink:
    """The file object torch's zip writer writes through (it calls ``write(memoryview)``)."""

    def __init__(self, fd: int, placeholder: memoryview) -> None:
        self.fd, self.ranges = fd, None
        self._placeholder = _address(placeholder), len(placeholder)

    def write(self, data: memoryview) -> int:
        size = data.nbytes
        if size == 0:
            return 0
        start = _address(data) - self._placeholder[0]
        if self.ranges is not None and 0 <= start < self._placeholder[1]:
            _copy_ranges(self.fd, self.ranges, start, size)
        else:
            _write_all(self.fd, data)
        return size

    def flush(self) -> None:
        pass


def _address(view: memoryview) -> int:
    import numpy as np

    return int(np.frombuffer(view, dtype=np.uint8).ctypes.data) if view.nbytes else 0


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def _copy_ranges(fd: int, ranges: list[FileRange], start: int, size: int) -> None:
    """Append bytes [start, start + size) of the concatenated ``ranges`` to ``fd``, inside the kernel."""
    for piece in ranges:
        if size <= 0:
            return
        if start >= piece.nbytes:
            start -= piece.nbytes
            continue
        count = min(piece.nbytes - start, size)
        if piece.fd is None:
            _write_all(fd, bytes(count))
        else:
            _send(fd, piece.fd, piece.offset + start, count)
        start, size = 0, size - count


def _send(fd: int, source: int, offset: int, count: int) -> None:
    """Append ``count`` bytes of ``source`` from ``offset`` to ``fd``: ``sendfile``, else read + write."""
    import errno

    while count:
        try:
            sent = os.sendfile(fd, source, offset, count)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            sent = len(chunk := os.pread(source, min(count, 1 << 24), offset))
            _write_all(fd, chunk)
        if sent == 0:
            raise OSError(f"source file ended at byte {offset} ({count} more bytes expected)")
        offset, count = offset + sent, count - sent


class StreamingTorchWriter:
    """Declare the object with ``TensorSpec`` leaves, then ``write(path_in_obj, tensor)`` each one."""

    def __init__(self, path: str | Path, obj: Any) -> None:
        self.path = Path(path)
        self._refs: dict[str, _StorageRef] = {}
        skeleton = self._replace_specs(obj, ())
        buffer = io.BytesIO()
        _Pickler(buffer, protocol=2).dump(skeleton)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        largest = max((ref.spec.nbytes for ref in self._refs.values()), default=1)
        # address space only: never written or read, so it costs no memory
        self._placeholder_map = mmap.mmap(-1, max(1, largest), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                                          | getattr(mmap, "MAP_NORESERVE", 0))
        self._placeholder = torch.frombuffer(self._placeholder_map, dtype=torch.uint8).untyped_storage()
        self._sink = _FileSink(self._fd, memoryview(self._placeholder_map))
        # No CRC32 over every byte (torch.serialization.config.save.compute_crc32=False does the
        # same for torch.save): it halves the throughput and torch.load does not need it.
        self._writer = torch._C.PyTorchFileWriter(self._sink, False)
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

    def _declared(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> _StorageRef:
        ref = self._refs.get(name)
        if ref is None:
            raise KeyError(f"{self.path}: tensor '{name}' was not declared")
        if name in self._written:
            raise KeyError(f"{self.path}: tensor '{name}' written twice")
        if dtype != ref.spec.dtype or shape != ref.spec.shape:
            raise ValueError(f"{self.path}: tensor '{name}' is {dtype} {shape}, "
                             f"declared {ref.spec.dtype} {ref.spec.shape}")
        return ref

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Stream the bytes of the tensor declared at ``name`` (e.g. ``"model/decoder.x.weight"``)."""
        ref = self._declared(name, tensor.dtype, tuple(tensor.shape))
        tensor = tensor.detach().cpu().contiguous()  # a dim-0 TP chunk is already contiguous: no copy
        start = tensor.storage_offset() * tensor.element_size()
        own_bytes = tensor.untyped_storage()[start:start + ref.spec.nbytes]  # a view, not a copy
        self._writer.write_record(f"data/{ref.key}", own_bytes, ref.spec.nbytes)
        self._written.add(name)

    def write_ranges(self, name: str, spec: TensorSpec, ranges: list[FileRange]) -> None:
        """Store the tensor declared at ``name`` from file ranges (its bytes in order), copied in the kernel."""
        ref = self._declared(name, spec.dtype, spec.shape)
        if sum(piece.nbytes for piece in ranges) != ref.spec.nbytes:
            raise ValueError(f"{self.path}: ranges for '{name}' hold {sum(p.nbytes for p in ranges)} bytes, "
                             f"the tensor {ref.spec.nbytes}")
        self._sink.ranges = ranges
        try:
            self._writer.write_record(f"data/{ref.key}", self._placeholder[0:ref.spec.nbytes], ref.spec.nbytes)
        finally:
            self._sink.ranges = None
        self._written.add(name)

    def close(self) -> None:
        if self.pending:
            raise RuntimeError(f"{self.path}: {len(self.pending)} declared tensors were never written, "
                               f"e.g. {self.pending[0]}")
        self._writer.write_end_of_file()
        self.release()

    def release(self) -> None:
        """Close the file (after ``close``, or to abandon an unfinished one)."""
        if self._fd >= 0:
            del self._writer  # an unfinished writer writes its zip directory now, while the file is open
            os.close(self._fd)
            self._fd = -1
