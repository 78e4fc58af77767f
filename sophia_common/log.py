"""Rank-aware logging, progress that shows in batch logs, and results kept apart from logs.

``get_logger(name)`` returns a logger that prints on global rank 0 only (ranks are read from the
usual launcher variables, so it works before ``torch.distributed`` exists); names are
``sophia.<package>.<module>``. ``progress(...)`` reports long CPU work on rank 0:

* on a terminal, as a tqdm bar;
* elsewhere (a SLURM log, a pipe), as a log line every ``SOPHIA_PROGRESS_SECONDS`` seconds (default
  30) and one when done: ``tokenise a.jsonl: 1200/5000 sample (24%, 40.1 sample/s)``.

``SOPHIA_PROGRESS`` chooses explicitly: ``bar`` (tqdm even without a terminal), ``lines`` or ``off``
(``1`` and ``0`` are accepted for ``bar`` and ``off``).

``results_stdout()`` is for commands whose results are JSON lines on stdout: inside it, everything
else written to stdout (print, libraries' log handlers bound to stdout such as vLLM's, child
processes writing to file descriptor 1) goes to stderr, and the yielded stream is the real stdout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

_FORMAT = "%(asctime)s %(levelname)s [%(name)s] %(message)s"
PROGRESS_ENV = "SOPHIA_PROGRESS"
PROGRESS_SECONDS_ENV = "SOPHIA_PROGRESS_SECONDS"


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


def progress_mode() -> str:
    """``bar``, ``lines`` or ``off`` for this process (see the module docstring)."""
    if global_rank() != 0:
        return "off"
    chosen = os.environ.get(PROGRESS_ENV, "").strip().lower()
    chosen = {"1": "bar", "0": "off", "true": "bar", "false": "off"}.get(chosen, chosen)
    if chosen in ("bar", "lines", "off"):
        return chosen
    return "bar" if sys.stderr.isatty() else "lines"


class LineProgress:
    """An iterable wrapper that logs ``desc: done/total unit (rate)`` every ``interval`` seconds and at the end."""

    def __init__(self, iterable: Iterable[Any] | None = None, desc: str = "", total: int | None = None,
                 unit: str = "it", interval: float | None = None, unit_scale: bool = False, **_: Any):
        self.iterable = iterable
        self.desc = desc or "progress"
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.unit = unit
        self.unit_scale = unit_scale
        self.interval = interval if interval is not None else float(os.environ.get(PROGRESS_SECONDS_ENV, 30))
        self.done = 0
        self._emitted = 0
        self._started = self._last = time.perf_counter()
        self._log = get_logger("sophia.progress")

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update()
        self.close()

    def update(self, count: int = 1) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._last = now
            self._emit(now)

    def _number(self, value: float) -> str:
        if not self.unit_scale:
            return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
        for prefix in ("", "k", "M", "G", "T"):
            if abs(value) < 1000 or prefix == "T":
                return f"{value:.1f}{prefix}"
            value /= 1000
        return str(value)

    def _emit(self, now: float) -> None:
        rate = self._number(self.done / max(now - self._started, 1e-9))
        done = self._number(self.done)
        share = (f"/{self._number(self.total)} {self.unit} ({100 * self.done / self.total:.0f}%, "
                 if self.total else f" {self.unit} (")
        self._log.info("%s: %s%s%s %s/s)", self.desc, done, share, rate, self.unit)
        self._emitted = self.done

    def close(self) -> None:
        if self.done != self._emitted:  # the final count, once
            self._emit(time.perf_counter())

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """Progress of long CPU work: a tqdm bar on a terminal, log lines in batch logs (module docstring)."""
    mode = progress_mode()
    if mode == "lines":
        return LineProgress(iterable, **kwargs)
    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=mode == "off", **kwargs)


@contextlib.contextmanager
def results_stdout() -> Iterator[IO[str]]:
    """Yield the real stdout for results; meanwhile anything else bound for stdout goes to stderr.

    File descriptor 1 itself is pointed at stderr while inside, so output of child processes and of
    handlers holding ``sys.stdout`` follows. Where stdout is not a real file (a test's captured
    stream), it is yielded as it is.
    """
    stream = sys.stdout
    try:
        out_fd, err_fd = stream.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield stream
        return
    stream.flush()
    saved = os.dup(out_fd)
    results = os.fdopen(os.dup(saved), "w", encoding="utf-8", buffering=1)
    os.dup2(err_fd, out_fd)
    try:
        yield results
    finally:
        results.flush()
        results.close()
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        os.dup2(saved, out_fd)
        os.close(saved)
