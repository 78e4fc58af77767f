#!/usr/bin/env bash
# Stop the CI cluster that .ci/slurm/setup.sh started: exactly the daemons whose pid files it
# wrote under SLURM_CI_DIR (a munged that was already running before setup.sh is left alone).
#
#   .ci/slurm/stop.sh              # SLURM_CI_DIR as for setup.sh (default /tmp/sophia-slurm-ci)
#   PURGE=1 .ci/slurm/stop.sh      # also delete the directory (state, spool, logs)
set -euo pipefail

DIR=${SLURM_CI_DIR:-/tmp/sophia-slurm-ci}

stop() {  # stop NAME PIDFILE: SIGTERM, then wait up to 10 s, then SIGKILL
  local name=$1 pidfile=$2 pid
  [[ -s $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    printf 'slurm-ci: stopping %s (pid %s)\n' "$name" "$pid" >&2
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$pidfile"
}

# slurmd first: it owns the job steps; then the controller; munge last (both use it).
stop slurmd "$DIR/slurmd.pid"
stop slurmctld "$DIR/slurmctld.pid"
stop munged "$DIR/munged.pid"
if [[ ${PURGE:-0} == 1 ]]; then
  rm -rf "$DIR"
fi
