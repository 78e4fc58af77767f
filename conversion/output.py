"""Where a conversion writes: checked up front, built under a temporary name, published whole.

Both directions (``hf-to-mcore``, ``mcore-to-hf``) write a directory. Before any work starts
the output path is checked, so a mistake is one clear line instead of a traceback after
minutes of conversion: an existing output needs ``--force``, a path that is a file (or under a
file) is refused. The directory is built as ``OUT.tmp-<pid>`` (``sophia_common.atomic``) and
renamed into place when complete; temporaries left by killed conversions of the same output
(their pid no longer runs) are removed first and named in the log.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from sophia_common.atomic import publish_dir, remove_stale_temps, temp_dir_for
from sophia_common.cli import UserError
from sophia_common.log import get_logger

log = get_logger("sophia.convert")


def check_output_path(out_dir: Path, force: bool) -> None:
    """Refuse an output path that cannot become a fresh directory (one line naming the path)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: output path is an existing file, not a directory; "
                        "choose another --out-dir")
    if out_dir.is_dir() and not force:
        raise UserError(f"{out_dir}: output directory already exists (use --force to replace it)")
    for parent in out_dir.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{out_dir}: cannot create it, {parent} is a file, not a directory")
            break


def write_output_dir(out_dir: str | Path, force: bool, build: Callable[[Path], None]) -> None:
    """Run ``build(temp_dir)`` and publish the result at ``out_dir``; nothing is left on failure."""
    out_dir = Path(out_dir)
    check_output_path(out_dir, force)
    for stale in remove_stale_temps(out_dir):
        log.warning("removed %s, the unfinished output of a conversion that was killed "
                    "(its process %s no longer runs)", stale, stale.name.rsplit(".tmp-", 1)[1])
    temp = temp_dir_for(out_dir)
    try:
        build(temp)
        publish_dir(temp, out_dir, replace=force)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
