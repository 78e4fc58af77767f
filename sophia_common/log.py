"""Rank-aware logging and progress bars.

``get_logger(name)`` returns a logger that prints on global rank 0 only (ranks are read
from the usual launcher variables, so it works before ``torch.distributed`` exists);
``progress(...)`` is tqdm, silenced off rank 0 and when stderr is not a terminal unless
forced with ``SOPHIA_PROGRESS=1``.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any

_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"


def global_rank() -> int:
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 0


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return global_rank() == 0 or record.levelno >= logging.WARNING


def get_logger(name: str) -> logging.Logger:
    """A logger that writes INFO on rank 0 and WARNING+ on every rank, to stderr."""
    logger = logging.getLogger(name)
    if not getattr(logger, "_sophia_configured", False):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler.addFilter(_RankZeroFilter())
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("SOPHIA_LOG_LEVEL", "INFO"))
        logger.propagate = False
        logger._sophia_configured = True  # type: ignore[attr-defined]
    return logger


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """tqdm on rank 0 for long CPU work; a no-op wrapper elsewhere."""
    from tqdm.auto import tqdm

    forced = os.environ.get("SOPHIA_PROGRESS") == "1"
    disable = global_rank() != 0 or not (forced or sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=disable, **kwargs)
