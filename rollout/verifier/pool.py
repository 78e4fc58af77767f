"""Verification under a hard time limit: persistent worker processes, killed and replaced on timeout.

SymPy and Math-Verify can run for minutes (or exhaust memory) on an adversarial answer, and a
SIGALRM timeout only works in the main thread (Math-Verify's raises in threads; verl's
``reward_score`` runs verification in killable processes for the same reason). So every check that needs SymPy or Math-Verify runs in a worker process fed through
a pipe; when a check overruns ``timeout_s`` the worker is killed, a fresh one takes its place, and
that item's result is ``Result(correct=False, reason="timeout")``. Workers also run under an
address-space limit (``memory_limit_mb``), so a huge integer power fails with ``reason="memory"``
instead of swapping the node. Inside a worker the project's rules get half the time limit (a
soft alarm in the worker's main thread); past it the worker answers ``rules_timeout`` and exits,
and the item is retried in a fresh worker with Math-Verify alone (``stats["retries"]``).

Cheap cases never leave the parent: extraction, exact matches, plain numbers, multiple-choice
letters and structure mismatches are decided in microseconds (``decide.decide_in_parent``); only
items that need SymPy or Math-Verify go to workers (``sophia-profile verifier`` measures it), and
identical (answer, gold) pairs in a batch — common among the K x N trajectories of one question —
are checked once. Workers start lazily, so a batch the parent decides alone starts no process.
The default ``forkserver`` context forks workers from a server that has SymPy, the LaTeX parser
and Math-Verify preloaded, which makes a replacement after a timeout cost milliseconds rather
than a fresh interpreter's import time.

    with VerifierPool(workers=2, timeout_s=5) as pool:
        results = pool.verify_batch([(response, gold), ...])   # order preserved
    results = verify_batch(pairs, timeout_s=5, workers=2)      # one-shot
"""

from __future__ import annotations

import importlib
import inspect
import multiprocessing
import os
import signal
import time
import weakref
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import wait

from rollout.verifier.decide import RULES_TIMEOUT, decide_in_parent
from rollout.verifier.extract import extract_answer, unwrap_gold

DEFAULT_TIMEOUT_S = 5.0
MAX_BODY_CHARS = 4000
STARTUP_TIMEOUT_S = 120.0
MAX_START_FAILURES = 3
DEFAULT_COMPARE = "rollout.verifier.decide:verify_answer"
FORKSERVER_PRELOAD = [
    "rollout.verifier.decide", "sympy", "latex2sympy2_extended.latex2sympy2", "math_verify",
]
_WARM_UP = ("\\frac{1}{2}", "x+1", None)


@dataclass(frozen=True)
class Result:
    """The outcome reward of one response: ``correct`` (Eq. 4), the extracted answer and why.

    ``reason`` when correct: exact, numeric, symbolic, choice, text, math_verify. When not:
    mismatch, structure, ambiguous, unparsable, too_long, no_answer, unfinished_think, truncated,
    empty_gold, timeout, memory, error (see docs/VERIFIER.md).
    """

    correct: bool
    extracted: str | None
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Task:
    index: int
    extracted: str
    gold: str
    choices: object
    context: dict  # how the answer was extracted, the final boxes and the text after the think block


def _unpack(item) -> tuple[str | None, str | None, object, bool]:
    """(response, gold, choices, truncated) from a ``(response, gold[, choices])`` tuple or a mapping."""
    if isinstance(item, Mapping):
        return item.get("response"), item.get("answer"), item.get("choices"), bool(item.get("truncated"))
    response, gold, *rest = item
    return response, gold, (rest[0] if rest else None), False


def prepare(index: int, item, fast_path: bool, raw: bool = False) -> Result | _Task:
    """Extract and try the cheap checks in this process; a ``_Task`` when a worker must decide.

    ``raw``: no extraction at all — the check gets the whole response and gold (a baseline that
    extracts by itself, such as Math-Verify alone)."""
    response, gold, choices, truncated = _unpack(item)
    if raw:
        return _Task(index, response or "", "" if gold is None else str(gold), choices, {})
    extraction = extract_answer(response)
    if truncated:
        return Result(False, extraction.answer, "truncated")
    if extraction.answer is None and not (extraction.how == "no_answer" and extraction.body.strip()):
        return Result(False, None, extraction.how)
    gold_text = unwrap_gold(gold) if gold is not None else ""
    if not gold_text:
        return Result(False, extraction.answer, "empty_gold")
    if fast_path:
        try:
            verdict = decide_in_parent(extraction.answer, extraction.how, extraction.boxes, gold_text, choices)
        except (Exception, RecursionError):
            return Result(False, extraction.answer, "error")
        if verdict is not None:
            return Result(verdict.correct, extraction.answer, verdict.reason)
    # boxes are judged alone (so identical boxes dedupe); otherwise the end of the text is what a
    # second opinion reads, as answers come last
    body = None if extraction.how == "boxed" else extraction.body[-MAX_BODY_CHARS:]
    context = {"how": extraction.how, "boxes": extraction.boxes, "body": body}
    return _Task(index, extraction.answer, gold_text, choices, context)


# ---------------------------------------------------------------- worker side


def _limit_memory(limit_mb: int | None) -> None:
    if not limit_mb:
        return
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (limit_mb * 2**20, hard))
    except (ImportError, ValueError, OSError):
        pass


def _resolve(path: str):
    """The check named ``module:function``; one taking a fourth argument also gets the context."""
    module_name, function_name = path.split(":")
    compare = getattr(importlib.import_module(module_name), function_name)
    if len(inspect.signature(compare).parameters) >= 4:
        return compare
    return lambda extracted, gold, choices, context: compare(extracted, gold, choices)


def _run_compare(compare, extracted: str, gold: str, choices, context=None) -> tuple[bool, str]:
    try:
        verdict = compare(extracted, gold, choices, context)
    except MemoryError:
        return False, "memory"
    except (Exception, RecursionError):
        return False, "error"
    if isinstance(verdict, tuple):
        return bool(verdict[0]), str(verdict[1])
    return bool(verdict.correct), str(verdict.reason)


def _worker_main(conn, compare_path: str, memory_limit_mb: int | None) -> None:
    """Worker loop: answer ``(index, extracted, gold, choices)`` messages until ``None`` or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _limit_memory(memory_limit_mb)
    compare = _resolve(compare_path)
    _run_compare(compare, *_WARM_UP)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, extracted, gold, choices, context = message
        verdict = _run_compare(compare, extracted, gold, choices, context)
        conn.send((index, *verdict))
        if verdict[1] == RULES_TIMEOUT:
            return  # interrupted inside SymPy: exit, the pool starts a fresh worker


# ---------------------------------------------------------------- parent side


class _Worker:
    """One worker process, its pipe, and the task it is running (``None`` when idle)."""

    def __init__(self, context, compare_path: str, memory_limit_mb: int | None) -> None:
        parent_end, child_end = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child_end, compare_path, memory_limit_mb), daemon=True, name="verifier"
        )
        self.process.start()
        child_end.close()
        self.conn = parent_end
        self.ready = False
        self.task: _Task | None = None
        self.deadline = time.monotonic() + STARTUP_TIMEOUT_S

    @property
    def active(self) -> bool:
        return not self.ready or self.task is not None

    def send(self, task: _Task, timeout_s: float) -> None:
        context = {**task.context, "rules_limit_s": timeout_s / 2}
        self.conn.send((task.index, task.extracted, task.gold, task.choices, context))
        self.task, self.deadline = task, time.monotonic() + timeout_s

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(timeout=2)
        self.kill()


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()
    workers.clear()


class VerifierPool:
    """A small pool of persistent, killable verification workers (see the module docstring).

    ``compare`` names the worker's check as ``"module:function"`` taking ``(extracted, gold,
    choices[, context])``; tests inject a slow one. ``fast_path`` decides cheap cases in the parent
    (only with the default check); ``raw`` hands the check whole responses, unextracted (baselines).
    ``stats`` counts checks, fast-path decisions, timeouts and restarts.
    """

    def __init__(
        self,
        workers: int = 1,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        *,
        compare: str = DEFAULT_COMPARE,
        fast_path: bool = True,
        start_method: str = "forkserver",
        memory_limit_mb: int | None = 2048,
        raw: bool = False,
    ) -> None:
        if workers < 1 or timeout_s <= 0:
            raise ValueError(f"need workers >= 1 and timeout_s > 0, got {workers} and {timeout_s}")
        self.n_workers, self.timeout_s = workers, float(timeout_s)
        self.compare, self.memory_limit_mb = compare, memory_limit_mb
        self.fast_path = fast_path and compare == DEFAULT_COMPARE and not raw
        self.raw = raw
        self._context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            self._context.set_forkserver_preload(FORKSERVER_PRELOAD)
        self._workers: list[_Worker] = []
        self._start_failures = 0
        self.stats = {
            "checks": 0,
            "fast_path": 0,
            "in_worker": 0,
            "deduplicated": 0,
            "timeouts": 0,
            "restarts": 0,
            "retries": 0,
        }
        self._finalizer = weakref.finalize(self, _stop_all, self._workers)

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker (politely, then by kill). The pool can be used again afterwards."""
        _stop_all(self._workers)

    def worker_pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    def verify_batch(self, items: Iterable) -> list[Result]:
        """One ``Result`` per item, in order. Items: ``(response, gold[, choices])`` or mappings
        with ``response``, ``answer`` and optional ``choices`` / ``truncated``."""
        prepared = [prepare(index, item, self.fast_path, self.raw) for index, item in enumerate(items)]
        results: list[Result | None] = [entry if isinstance(entry, Result) else None for entry in prepared]
        unique: dict[tuple[str, str, str], _Task] = {}
        duplicates: list[tuple[_Task, _Task]] = []
        for task in (entry for entry in prepared if isinstance(entry, _Task)):
            key = (task.extracted, task.gold, repr(task.choices), repr(task.context))
            first = unique.setdefault(key, task)
            if first is not task:  # the K x N trajectories of a question often agree: check once
                duplicates.append((task, first))
        self.stats["checks"] += len(prepared)
        self.stats["fast_path"] += sum(isinstance(entry, Result) for entry in prepared)
        self.stats["in_worker"] += len(unique)
        self.stats["deduplicated"] += len(duplicates)
        if unique:
            self._run(deque(unique.values()), results)
        for task, first in duplicates:
            results[task.index] = results[first.index]
        return results  # type: ignore[return-value]

    def _run(self, pending: deque[_Task], results: list[Result | None]) -> None:
        while pending or any(worker.task is not None for worker in self._workers):
            busy = sum(worker.task is not None for worker in self._workers)
            while len(self._workers) < min(self.n_workers, len(pending) + busy):
                self._workers.append(_Worker(self._context, self.compare, self.memory_limit_mb))
            for worker in self._workers:
                if worker.ready and worker.task is None and pending:
                    worker.send(pending.popleft(), self.timeout_s)
            active = [worker for worker in self._workers if worker.active]
            if not active:
                continue
            timeout = max(0.0, min(worker.deadline for worker in active) - time.monotonic())
            readable = wait([worker.conn for worker in active], timeout=timeout)
            for worker in active:
                if worker.conn in readable:
                    retry = self._receive(worker, results)
                    if retry is not None:
                        pending.appendleft(retry)
                elif worker.active and time.monotonic() >= worker.deadline:
                    self._expire(worker, results)

    def _receive(self, worker: _Worker, results: list[Result | None]) -> _Task | None:
        """Take a worker's message; a task to retry when the rules overran their soft limit."""
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            self._retire(worker, results, "error")
            return None
        if message[0] == "ready":
            worker.ready, worker.deadline, self._start_failures = True, float("inf"), 0
            return None
        index, correct, reason = message
        task, worker.task = worker.task, None
        if reason == RULES_TIMEOUT and not task.context.get("skip_rules"):
            self.stats["retries"] += 1
            self._retire(worker, results, "error")  # it exits by itself; its state is not trusted
            return replace(task, context={**task.context, "skip_rules": True})
        results[index] = Result(correct, task.extracted, reason)
        return None

    def _expire(self, worker: _Worker, results: list[Result | None]) -> None:
        self.stats["timeouts"] += worker.task is not None
        self._retire(worker, results, "timeout")

    def _retire(self, worker: _Worker, results: list[Result | None], reason: str) -> None:
        """Kill a worker that timed out or died; its task (if any) gets ``reason``."""
        if worker.task is not None:
            results[worker.task.index] = Result(False, worker.task.extracted, reason)
        elif not worker.ready:
            self._start_failures += 1
            if self._start_failures >= MAX_START_FAILURES:
                _stop_all(self._workers)
                raise RuntimeError(f"verifier workers failed to start {MAX_START_FAILURES} times in a row")
        worker.kill()
        self._workers.remove(worker)
        self.stats["restarts"] += 1


def verify_batch(
    pairs: Iterable, timeout_s: float = DEFAULT_TIMEOUT_S, workers: int = 1, **pool_options
) -> list[Result]:
    """Verify ``(response, gold[, choices])`` pairs with a throw-away ``VerifierPool``; order preserved."""
    with VerifierPool(workers=workers, timeout_s=timeout_s, **pool_options) as pool:
        return pool.verify_batch(pairs)
