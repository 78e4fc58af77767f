"""Launch real multi-process jobs for tests: ``torchrun`` on this machine, gloo on CPU.

``torchrun_script(script, nproc, args)`` starts ``nproc`` ranks of a worker script with the
repository on ``PYTHONPATH`` and a free rendezvous port, waits, and raises with the tail of
the combined log if any rank fails. Oversubscription (4 ranks on 2 cores) is fine for the
tiny models; each rank uses one thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rollout.local_server import free_port

REPO = Path(__file__).resolve().parents[1]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def torchrun_script(script: str | Path, nproc: int, args: list[str], timeout: float = 600,
                    **env: str) -> str:
    """Run ``script`` on ``nproc`` ranks; return the combined output, raise on failure."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
           "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(script), *args]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(**env), capture_output=True, text=True,
                          timeout=timeout)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-60:])
        raise AssertionError(f"{nproc}-rank job {script} {' '.join(args)} failed "
                             f"(exit {proc.returncode}):\n{tail}")
    return output
