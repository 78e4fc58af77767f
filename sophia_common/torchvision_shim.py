"""Let the CUDA-built torchvision wheel import on a CPU-only torch (vLLM's InternVL image path on CPU).

What: ``install()`` puts an import hook on ``sys.meta_path``. The first time anything imports
``torchvision``, and only when the installed torch is a CPU-only build, the hook declares the two
operator schemas torchvision's Python side registers fake kernels for (``torchvision::nms`` and
``torchvision::qnms``) before torchvision itself is imported. torchvision's C++ ops stay
unavailable (they need the CUDA libraries), but its image transforms work, and that is all vLLM's
InternVL image processor and ``transformers`` use. Without the declaration, ``import torchvision``
fails with "operator torchvision::nms does not exist" and takes ``import transformers`` with it.

Why an import hook installed at interpreter start: vLLM inspects models and runs its engine core in
fresh interpreters (spawned processes), so the declaration has to happen in every Python process
before torchvision is imported. ``python -m sophia_common.torchvision_shim --install`` writes a
``.pth`` file into the environment's site-packages (the Makefile's install step runs it); Python
executes it at start-up, which calls ``install()``. The hook costs nothing until torchvision is
imported, never acts on a CUDA or ROCm torch (whose torchvision loads its real ops), and removes
itself after its one check. ``--uninstall`` removes the ``.pth`` file.
"""

from __future__ import annotations

import argparse
import importlib.abc
import sys
import sysconfig
from pathlib import Path
from typing import Any

PTH_NAME = "sophia_torchvision_shim.pth"
PTH_LINE = "import sophia_common.torchvision_shim as _sophia_tv; _sophia_tv.install()\n"
SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
           "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
_library: Any = None  # torch.library.Library keeps its definitions only while it is alive


def cpu_only_torch() -> bool:
    """True for a torch built without CUDA and ROCm (the only case the shim acts on)."""
    import torch

    return torch.version.cuda is None and getattr(torch.version, "hip", None) is None


def declare_schemas() -> bool:
    """Declare torchvision's op schemas on a CPU-only torch; True when they were declared here."""
    global _library
    if _library is not None or not cpu_only_torch():
        return False
    import torch

    library = torch.library.Library("torchvision", "DEF")  # noqa: TOR901 - a schema-only library
    for schema in SCHEMAS:
        try:
            library.define(schema)
        except RuntimeError:  # already declared (torchvision's own ops loaded after all)
            return False
    _library = library
    return True


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """Runs ``declare_schemas`` once, just before the first ``import torchvision``."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torchvision":
            uninstall_hook()
            declare_schemas()
        return None  # the regular finders import torchvision itself


def install() -> None:
    """Put the hook on ``sys.meta_path`` (idempotent); no effect once torchvision is imported."""
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionHook())


def uninstall_hook() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _TorchvisionHook)]


def pth_path() -> Path:
    return Path(sysconfig.get_paths()["purelib"]) / PTH_NAME


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sophia_common.torchvision_shim",
        description="Install (or remove) the start-up hook that lets torchvision import on a CPU-only torch.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--install", action="store_true", help=f"write {PTH_NAME} into site-packages")
    action.add_argument("--uninstall", action="store_true", help=f"remove {PTH_NAME} from site-packages")
    args = parser.parse_args(argv)
    path = pth_path()
    if args.install:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(PTH_LINE)
        tmp.replace(path)
        print(f"wrote {path}")
    elif path.exists():
        path.unlink()
        print(f"removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
