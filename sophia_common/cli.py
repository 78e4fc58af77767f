"""Tiny helpers for the console scripts: lazy sub-command dispatch and clean error exits.

Each console script maps sub-command names to ``"module:function"`` strings; the module is
imported only when its sub-command runs, so ``sophia-rollout check`` never imports vLLM and
``sophia-convert inspect`` never imports Megatron. A known user error (``ConfigError``,
``UserError``) prints one line on stderr and exits 2 instead of a traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

from sophia_common.config import ConfigError


class UserError(RuntimeError):
    """Bad input from the user (a file, key or tensor): printed as one line, exit code 2."""


def run_guarded(fn: Callable[[], int | None]) -> int:
    try:
        return int(fn() or 0)
    except (ConfigError, UserError) as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"error: {line}", file=sys.stderr)
        return 2


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: Sequence[str] | None = None) -> int:
    """Run ``commands[argv[0]]`` = (``"module:function"``, one-line help) with the remaining args."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {prog} <command> [options]\n\ncommands:")
        for name, (_, help_text) in commands.items():
            print(f"  {name:<14} {help_text}")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(f"error: unknown command {name!r}; choose from {', '.join(commands)}", file=sys.stderr)
        return 2
    module_name, func_name = commands[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return run_guarded(lambda: func(rest))
