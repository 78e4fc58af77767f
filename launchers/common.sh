# shellcheck shell=bash
# Shared code of the SLURM launchers (sourced, never run). Every launcher does:
#
#   SOPHIA_ROOT=${SOPHIA_ROOT:-${SLURM_SUBMIT_DIR:-...}}; source "$SOPHIA_ROOT/launchers/common.sh"
#   sophia_setup              # cd to the repo, PYTHONPATH, banner in the job log
#   sophia_train | sophia_rollout_task STAGES | sophia_srun ...
#
# Knobs read here (environment; sbatch passes the submitting shell's environment to the job):
#   SOPHIA_ROOT       repository root; relative paths in recipes are relative to it (default: the
#                     directory sbatch was called from, so submit from the repo root)
#   CONFIG            recipe YAML (each launcher has its own default)
#   OVERRIDES         space-separated recipe overrides with full dotted keys, e.g.
#                     "train.steps=100 checkpoint.save_dir=/lustre/run1" (values without spaces)
#   PYTHON            interpreter that has the project installed or importable (default: python)
#   CONTAINER_IMAGE   run every step in this container through pyxis/enroot (srun --container-image),
#                     e.g. nvcr.io#nvidia/pytorch:25.04-py3 or a .sqsh file; unset: no container
#   CONTAINER_MOUNTS  pyxis --container-mounts (default: SOPHIA_ROOT at the same path); add data and
#                     checkpoint file systems, comma-separated, at the same paths inside and outside
#   CONTAINER_NAME    pyxis --container-name, so the steps of one job reuse one unpacked container
#   SRUN_ARGS         extra srun options for every step (space-separated), e.g. "--mpi=pmix"
#   MAX_REQUEUES      requeue at most this many times (default 20): guards against a loop that
#                     checkpoints and requeues without ever finishing
#   REQUEUE           1 (default): an unfinished, checkpointed run requeues itself; 0: exit instead
#   MASTER_ADDR/PORT  rendezvous of torch.distributed (default: first node of the job, a port
#                     derived from the job id so two jobs sharing a node do not collide)
#   NCCL_*, TORCH_NCCL_*, CUDA_DEVICE_MAX_CONNECTIONS, OMP_NUM_THREADS: see sophia_dist_env

# ---- basics -----------------------------------------------------------------------------------

sophia_log() { printf '[sophia %(%F %T)T] %s\n' -1 "$*" >&2; }
sophia_die() { sophia_log "error: $*"; exit 1; }

# The launcher's own job id: array tasks are "<array job>_<task>", plain jobs their id.
sophia_job_label() {
  if [[ -n ${SLURM_ARRAY_JOB_ID:-} ]]; then
    printf '%s_%s' "$SLURM_ARRAY_JOB_ID" "$SLURM_ARRAY_TASK_ID"
  else
    printf '%s' "${SLURM_JOB_ID:-local}"
  fi
}

# cd to the repository, make it importable, parse OVERRIDES, print what runs where.
sophia_setup() {
  [[ -f $SOPHIA_ROOT/sophia_megatron/__init__.py ]] \
    || sophia_die "SOPHIA_ROOT=$SOPHIA_ROOT is not the repository (submit from its root or set SOPHIA_ROOT)"
  cd "$SOPHIA_ROOT" || exit
  PYTHON=${PYTHON:-python}
  # The project runs from the checkout without an install (`python -m sophia_tools.train_cli`).
  export PYTHONPATH="$SOPHIA_ROOT${PYTHONPATH:+:$PYTHONPATH}"
  # Word-split OVERRIDES once into an array; every command gets the same list.
  read -r -a SOPHIA_OVERRIDES <<<"${OVERRIDES:-}"
  SOPHIA_CONTAINER_ARGS=()
  if [[ -n ${CONTAINER_IMAGE:-} ]]; then
    SOPHIA_CONTAINER_ARGS=(
      "--container-image=$CONTAINER_IMAGE"
      "--container-mounts=${CONTAINER_MOUNTS:-$SOPHIA_ROOT:$SOPHIA_ROOT}"
      "--container-workdir=$SOPHIA_ROOT"
      "--container-name=${CONTAINER_NAME:-sophia}"
    )
  fi
  read -r -a SOPHIA_SRUN_ARGS <<<"${SRUN_ARGS:-}"
  sophia_log "job $(sophia_job_label) '${SLURM_JOB_NAME:-}' restart ${SLURM_RESTART_COUNT:-0}" \
    "on ${SLURM_JOB_NODELIST:-$(hostname)} (${SLURM_NNODES:-1} node(s), ${SLURM_NTASKS:-1} task(s))"
  sophia_log "repo $SOPHIA_ROOT @ $(git -C "$SOPHIA_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)," \
    "python $PYTHON${CONTAINER_IMAGE:+, container $CONTAINER_IMAGE}"
  sophia_log "config ${CONFIG:-none}; overrides: ${OVERRIDES:-none}"
}

# srun one job step: container, extra options, and --kill-on-bad-exit so that one failed rank ends
# the step instead of leaving the others blocked in a collective until the time limit.
#   sophia_srun [srun options] -- command args...
sophia_srun() {
  local options=()
  while (($#)) && [[ $1 != -- ]]; do options+=("$1"); shift; done
  [[ ${1:-} == -- ]] && shift
  srun --kill-on-bad-exit=1 "${SOPHIA_CONTAINER_ARGS[@]}" "${SOPHIA_SRUN_ARGS[@]}" "${options[@]}" "$@"
}

# Python on one task: in the container when there is one (the batch host may lack the project's
# dependencies), directly otherwise (also outside SLURM, e.g. pipeline.sh on a login node).
sophia_python() {
  if [[ -n ${CONTAINER_IMAGE:-} && -n ${SLURM_JOB_ID:-} ]]; then
    sophia_srun --nodes=1 --ntasks=1 -- "$PYTHON" "$@"
  else
    "$PYTHON" "$@"
  fi
}

# Values from the recipe (CONFIG + OVERRIDES), one line each, "" for null/missing:
#   read -r steps save_dir < <(sophia_recipe_get train.steps checkpoint.save_dir | paste -sd' ')
# The same YAML reader as the CLIs (sophia_common.config), so the launcher and the trainer agree.
sophia_recipe_get() {
  sophia_python - "${CONFIG:-}" "$@" <<'PY'
import os
import sys

from sophia_common.config import read_recipe

config, keys = sys.argv[1] or None, sys.argv[2:]
recipe = read_recipe(config, os.environ.get("OVERRIDES", "").split())
for key in keys:
    node = recipe
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    print("" if node is None else node)
PY
}

# ---- distributed training ---------------------------------------------------------------------

# torch.distributed rendezvous and NCCL settings; every value can be overridden from the
# environment. The trainer reads SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID itself
# (sophia_megatron.parallel), so srun starts the ranks directly: no torchrun, no per-node agent.
sophia_dist_env() {
  local hosts
  mapfile -t hosts < <(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname)}")
  # Rank 0 runs on the first node of the allocation (srun's block distribution).
  export MASTER_ADDR=${MASTER_ADDR:-${hosts[0]}}
  # A port per job: two jobs that share a node (small runs, tests) must not collide.
  export MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
  # Ranks come from SLURM; a RANK/WORLD_SIZE inherited from the submitting shell would win
  # over them in sophia_megatron.parallel, so drop any.
  unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE
  # Megatron needs one CUDA stream queue per device for its TP/SP communication overlap to
  # keep kernels in order.
  export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
  # A hung or failed collective aborts the step (and the job) instead of blocking until the
  # time limit; the requeued job resumes from the last checkpoint.
  export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
  # Lower memory fragmentation with NCCL on side streams (Megatron's recommendation).
  export TORCH_NCCL_AVOID_RECORD_STREAMS=${TORCH_NCCL_AVOID_RECORD_STREAMS:-1}
  # WARN: NCCL prints only problems; INFO shows the chosen transports (IB/NVLink) once.
  export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
  # InfiniBand adapters and the bootstrap interface: NCCL finds them on most clusters; set
  # NCCL_IB_HCA (e.g. mlx5) and NCCL_SOCKET_IFNAME (e.g. ib0 or eth0) when it does not.
  # Each rank uses one CPU thread for intra-op work unless told otherwise: ranks share the node.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
  export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
  sophia_log "rendezvous $MASTER_ADDR:$MASTER_PORT, ${SLURM_NTASKS:-1} ranks"
}

# The step number in SAVE_DIR's tracker, or -1 when there is no checkpoint yet.
sophia_tracker_step() {
  local tracker=$1/latest_checkpointed_iteration.txt
  if [[ -n $1 && -s $tracker ]]; then tr -d '[:space:]' <"$tracker"; else echo -1; fi
}

# Train with sophia-train on every task of the allocation, then requeue the job if the trainer
# stopped early. The trainer checkpoints at the next step boundary and exits 0 on SIGUSR1 (sent by
# `#SBATCH --signal=USR1@600` before the time limit, or by `scancel --signal=USR1`) and on SIGTERM;
# it resumes from checkpoint.save_dir when the job starts again. "Stopped early" is read from the
# checkpoint tracker: its step is below train.steps. A requeue needs progress (the tracker moved
# during this run), so a run that cannot advance fails instead of requeueing forever.
sophia_train() {
  local steps save_dir before after rc=0
  {
    read -r steps
    read -r save_dir
  } < <(sophia_recipe_get train.steps checkpoint.save_dir)
  [[ $steps =~ ^[0-9]+$ ]] || sophia_die "could not read train.steps from $CONFIG (got '$steps')"
  before=$(sophia_tracker_step "$save_dir")
  sophia_log "train.steps=$steps, checkpoint.save_dir=${save_dir:-none} (at step $before)"
  sophia_dist_env
  sophia_srun -- "$PYTHON" -m sophia_tools.train_cli --config "$CONFIG" "${SOPHIA_OVERRIDES[@]}" || rc=$?
  if ((rc != 0)); then
    sophia_log "training failed (exit $rc)"
    exit "$rc"
  fi
  after=$(sophia_tracker_step "$save_dir")
  if [[ -z $save_dir ]] || ((after >= steps)); then
    sophia_log "training finished (checkpoint step $after of $steps)"
    sophia_log "SOPHIA-LAUNCHER-OK $(sophia_job_label)"
    return 0
  fi
  sophia_log "training stopped early at step $after of $steps (checkpointed; a signal or exit_interval)"
  if [[ ${REQUEUE:-1} != 1 ]]; then
    sophia_log "REQUEUE=0: not requeueing; resubmit to continue from step $after"
    exit 3
  fi
  if ((after <= before)); then
    sophia_die "no progress in this run (checkpoint step $before -> $after): not requeueing"
  fi
  if ((${SLURM_RESTART_COUNT:-0} >= ${MAX_REQUEUES:-20})); then
    sophia_die "requeued ${SLURM_RESTART_COUNT} times already (MAX_REQUEUES=${MAX_REQUEUES:-20})"
  fi
  sophia_requeue
}

# Put this job back in the queue; it restarts from the top (the trainer / the rollout store
# resume), keeping its job id, so `--dependency=afterok:<id>` jobs wait for the final run.
sophia_requeue() {
  local id=${SLURM_JOB_ID:?not inside a SLURM job}
  sophia_log "SOPHIA-LAUNCHER-REQUEUE $(sophia_job_label) (restart ${SLURM_RESTART_COUNT:-0})"
  scontrol requeue "$id" || sophia_die "scontrol requeue $id failed (job submitted with --no-requeue?)"
  # SLURM now ends this run; nothing below may run (or report success) meanwhile.
  sleep 600 &
  wait $!
  sophia_die "still running 10 minutes after scontrol requeue $id"
}

# ---- rollout ----------------------------------------------------------------------------------

# "i/n" of this array task (ids 0..n-1, as `#SBATCH --array=0-<n-1>` gives); SHARD outside arrays.
sophia_shard() {
  if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
    local count=${SLURM_ARRAY_TASK_COUNT:-1}
    if [[ ${SLURM_ARRAY_TASK_MIN:-0} != 0 || ${SLURM_ARRAY_TASK_MAX:-0} != $((count - 1)) ]]; then
      sophia_die "array must be 0-<n-1> with no gaps (got ${SLURM_ARRAY_TASK_MIN}-${SLURM_ARRAY_TASK_MAX}" \
        "for $count tasks): each task i of n owns the ids that hash to i"
    fi
    printf '%s/%s' "$SLURM_ARRAY_TASK_ID" "$count"
  else
    printf '%s' "${SHARD:-0/1}"
  fi
}

# Where the array tasks write (STORE_LAYOUT):
#   per-task (default)  each task has its own store TASKS_DIR/<i>of<n>; rollout_merge_pack.sh merges
#                       them into STORE_DIR and checks that every input id is stored or rejected.
#                       Task i of the reason array continues in task i's store, where caption task i
#                       put the captions of the same ids: both arrays must have the same size.
#   shared              every task writes into STORE_DIR itself, under its own writer tag (the keys of
#                       two tasks are disjoint); the arrays may differ in size, nothing is merged.
#   STORE_DIR  the merged / shared store (default: rollout.store_dir of the recipe)
#   TASKS_DIR  parent of the per-task stores (default: STORE_DIR.tasks)
sophia_store_dirs() {
  STORE_LAYOUT=${STORE_LAYOUT:-per-task}
  [[ $STORE_LAYOUT == per-task || $STORE_LAYOUT == shared ]] \
    || sophia_die "STORE_LAYOUT must be per-task or shared (got '$STORE_LAYOUT')"
  STORE_DIR=${STORE_DIR:-$(sophia_recipe_get rollout.store_dir)}
  [[ -n $STORE_DIR ]] || sophia_die "rollout.store_dir is not set in $CONFIG (or set STORE_DIR)"
  TASKS_DIR=${TASKS_DIR:-$STORE_DIR.tasks}
}

# One array task: run each stage of STAGES on this task's shard, in this task's own store.
# Rollout stages skip keys already stored, so a task that is cut short (time limit, preemption,
# node failure) loses at most its batch in flight when it runs again. The batch shell gets
# SIGUSR1 before the time limit (`#SBATCH --signal=B:USR1@300`) and requeues the task.
sophia_rollout_task() {
  local stages=("$@") shard index count task_store stage
  # First: bash's default action for SIGUSR1 would end the task without a requeue.
  trap sophia_on_time_limit USR1
  shard=$(sophia_shard)
  index=${shard%/*} count=${shard#*/}
  sophia_store_dirs
  # Per-task stores are named like the store's writer tag (rollout.sharding.Shard.tag).
  task_store=$(printf '%s/%05dof%05d' "$TASKS_DIR" "$index" "$count")
  if [[ $STORE_LAYOUT == shared ]]; then task_store=$STORE_DIR; fi
  sophia_log "shard $shard, stages ${stages[*]}, store $task_store ($STORE_LAYOUT)"
  if [[ $STORE_LAYOUT == per-task && ${stages[0]} != caption && ! -d $task_store ]]; then
    sophia_die "$task_store does not exist: the caption array must run first, with the same number" \
      "of tasks ($count) as this one"
  fi
  for stage in "${stages[@]}"; do
    # srun in the background + wait: bash runs a trap only between commands, and `wait` is the one
    # command a signal interrupts, so the requeue happens at once instead of after the stage.
    sophia_srun --nodes=1 --ntasks=1 -- "$PYTHON" -m sophia_tools.rollout_cli "$stage" --config "$CONFIG" \
      "${SOPHIA_OVERRIDES[@]}" "rollout.store_dir=$task_store" --shard "$shard" &
    wait $! || sophia_die "stage $stage failed on shard $shard (exit $?)"
  done
  sophia_log "SOPHIA-LAUNCHER-OK $(sophia_job_label)"
}

sophia_on_time_limit() {
  sophia_log "time limit near (SIGUSR1): requeueing; finished batches are in the store"
  if ((${SLURM_RESTART_COUNT:-0} >= ${MAX_REQUEUES:-20})); then
    sophia_die "requeued ${SLURM_RESTART_COUNT} times already (MAX_REQUEUES=${MAX_REQUEUES:-20})"
  fi
  sophia_requeue
}

# ---- serving ----------------------------------------------------------------------------------

# The served model's settings (launchers/serve.sh): the knobs, else the recipe's rollout.<ROLE> keys.
sophia_serve_settings() {
  local key values=() recipe_keys=()
  local names=(model tp pp max_model_len dtype max_num_seqs gpu_memory_utilization trust_remote_code
    enforce_eager seed max_tiles)
  if [[ -n ${ROLE:-} ]]; then
    for key in "${names[@]}"; do recipe_keys+=("rollout.$ROLE.$key"); done
    mapfile -t values < <(sophia_recipe_get "${recipe_keys[@]}")
  fi
  MODEL=${MODEL:-${values[0]:-}}
  TP=${TP:-${values[1]:-1}}
  PP=${PP:-${values[2]:-1}}
  MAX_MODEL_LEN=${MAX_MODEL_LEN:-${values[3]:-}}
  SERVE_DTYPE=${values[4]:-auto}
  SERVE_MAX_NUM_SEQS=${values[5]:-}
  SERVE_GPU_MEMORY=${values[6]:-}
  SERVE_REMOTE_CODE=${values[7]:-False}
  SERVE_EAGER=${values[8]:-False}
  SERVE_SEED=${values[9]:-0}
  SERVE_MAX_TILES=${values[10]:-}  # set for the captioner only: its server takes images
  [[ -n $MODEL ]] || sophia_die "no model to serve: set MODEL, or CONFIG and ROLE (rollout.<ROLE>.model)"
  [[ $TP =~ ^[1-9][0-9]*$ && $PP =~ ^[1-9][0-9]*$ ]] || sophia_die "TP and PP must be positive (got '$TP', '$PP')"
  local job=${SLURM_JOB_ID:-0}
  PORT=${PORT:-$((8000 + job % 1000))}
  RAY_PORT=${RAY_PORT:-$((6379 + job % 1000))}
  if [[ -n ${SERVE_HOSTS:-} ]]; then
    read -r -a SOPHIA_SERVE_HOSTS <<<"$SERVE_HOSTS"
  elif [[ -n ${SLURM_JOB_NODELIST:-} ]]; then
    mapfile -t SOPHIA_SERVE_HOSTS < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  else
    SOPHIA_SERVE_HOSTS=("$(hostname)")
  fi
  SERVE_HEAD=${SOPHIA_SERVE_HOSTS[0]}
}

# The vLLM server command line for the settings above (multi-node: the Ray executor).
sophia_serve_command() {
  local cmd
  read -r -a cmd <<<"${VLLM_CMD:-$PYTHON -m vllm.entrypoints.openai.api_server --model}"
  cmd+=("$MODEL" --host 0.0.0.0 --port "$PORT" --tensor-parallel-size "$TP" --pipeline-parallel-size "$PP"
    --dtype "$SERVE_DTYPE" --seed "$SERVE_SEED" --generation-config vllm)
  # (--generation-config vllm: the recipe's sampling settings only, not the checkpoint's defaults,
  # so a served request samples as the in-process engine would)
  [[ -n $MAX_MODEL_LEN ]] && cmd+=(--max-model-len "$MAX_MODEL_LEN")
  [[ -n $SERVE_MAX_NUM_SEQS ]] && cmd+=(--max-num-seqs "$SERVE_MAX_NUM_SEQS")
  [[ -n $SERVE_GPU_MEMORY ]] && cmd+=(--gpu-memory-utilization "$SERVE_GPU_MEMORY")
  [[ ${SERVE_REMOTE_CODE,,} == true ]] && cmd+=(--trust-remote-code)
  [[ ${SERVE_EAGER,,} == true ]] && cmd+=(--enforce-eager)
  ((${#SOPHIA_SERVE_HOSTS[@]} > 1)) && cmd+=(--distributed-executor-backend ray)
  if [[ -n $SERVE_MAX_TILES ]]; then
    # One image per prompt and the recipe's tiling (vLLM refuses per-request processor options).
    mapfile -t -O "${#cmd[@]}" cmd < <(sophia_python -c 'import sys
from rollout.openai_engine import server_mm_args
print("\n".join(server_mm_args(sys.argv[1], int(sys.argv[2]))))' "$MODEL" "$SERVE_MAX_TILES")
  fi
  local extra
  read -r -a extra <<<"${VLLM_ARGS:-}"
  printf '%s\n' "${cmd[@]}" "${extra[@]}"
}

# 0 when URL answers 200 (curl, or Python's urllib where there is no curl).
sophia_http_ok() {
  if command -v curl >/dev/null; then
    curl -sf -o /dev/null --max-time 5 "$1"
  else
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1" 2>/dev/null
  fi
}

# Start Ray across the allocation (head on the first node, one worker per other node) and wait until
# every node has joined.
sophia_ray_cluster() {
  local count=${#SOPHIA_SERVE_HOSTS[@]} joined=0 deadline=$((SECONDS + 600))
  local ray=${RAY_CMD:-ray} address=$SERVE_HEAD:$RAY_PORT
  sophia_srun --overlap --nodes=1 --ntasks=1 -w "$SERVE_HEAD" -- "$ray" start --head --port="$RAY_PORT" --block &
  sleep 10
  sophia_srun --overlap --nodes=$((count - 1)) --ntasks=$((count - 1)) --exclude="$SERVE_HEAD" -- \
    "$ray" start --address="$address" --block &
  while ((joined < count)); do
    ((SECONDS < deadline)) || sophia_die "only $joined of $count nodes joined the Ray cluster at $address"
    sleep 5
    joined=$(sophia_srun --overlap --nodes=1 --ntasks=1 -w "$SERVE_HEAD" -- "$ray" status --address="$address" \
      2>/dev/null | grep -c ' node_' || true)
  done
  sophia_log "Ray cluster up: $count nodes, head $address"
}

sophia_serve_stop() {
  trap - EXIT TERM INT USR1
  [[ -n ${ENDPOINT_FILE:-} ]] && rm -f "$ENDPOINT_FILE"
  if [[ -n ${SOPHIA_SERVER_PID:-} ]]; then
    kill -TERM "$SOPHIA_SERVER_PID" 2>/dev/null || true
    wait "$SOPHIA_SERVER_PID" 2>/dev/null || true
  fi
  if ((${#SOPHIA_SERVE_HOSTS[@]} > 1)); then
    sophia_srun --overlap --nodes=${#SOPHIA_SERVE_HOSTS[@]} --ntasks=${#SOPHIA_SERVE_HOSTS[@]} -- \
      "${RAY_CMD:-ray}" stop --force >/dev/null 2>&1 || true
  fi
  sophia_log "server stopped; removed ${ENDPOINT_FILE:-no endpoint file}"
}

# Serve MODEL until the job ends; ENDPOINT_FILE holds the URL while the server answers.
sophia_serve() {
  [[ -n ${ENDPOINT_FILE:-} ]] || sophia_die "ENDPOINT_FILE is required: where the rollout jobs read the URL"
  local url=http://$SERVE_HEAD:$PORT server=() deadline=$((SECONDS + ${HEALTH_TIMEOUT_S:-3600}))
  mapfile -t server < <(sophia_serve_command)
  if ! command -v nvidia-smi >/dev/null; then
    # vLLM on CPU: a KV cache of 10 % of the memory (1-8 GiB) instead of most of it.
    local gib
    gib=$(awk '/MemTotal/ {g = int($2 / 1048576 / 10); print (g < 1 ? 1 : (g > 8 ? 8 : g))}' /proc/meminfo)
    export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-$gib}
    # vLLM-CPU crashes when chunked prefill splits the prompt of a request with its own seed.
    local budget=${MAX_MODEL_LEN:-8192}
    server+=(--no-enable-chunked-prefill --max-num-batched-tokens $((budget > 8192 ? budget : 8192)))
  fi
  sophia_log "serving $MODEL on ${SOPHIA_SERVE_HOSTS[*]} (tp $TP, pp $PP) at $url -> $ENDPOINT_FILE"
  if [[ ${DRY:-0} == 1 ]]; then
    if ((${#SOPHIA_SERVE_HOSTS[@]} > 1)); then
      printf 'ray-head %s: %s start --head --port=%s --block\n' "$SERVE_HEAD" "${RAY_CMD:-ray}" "$RAY_PORT"
      printf 'ray-worker %s: %s start --address=%s:%s --block\n' "${SOPHIA_SERVE_HOSTS[*]:1}" "${RAY_CMD:-ray}" \
        "$SERVE_HEAD" "$RAY_PORT"
    fi
    printf 'server %s: %s\n' "$SERVE_HEAD" "${server[*]}"
    printf 'endpoint %s -> %s\n' "$url" "$ENDPOINT_FILE"
    return 0
  fi
  rm -f "$ENDPOINT_FILE"  # a stale URL of an earlier server must not be read meanwhile
  mkdir -p "$(dirname "$ENDPOINT_FILE")"
  trap sophia_serve_stop EXIT
  trap 'sophia_log "signalled: stopping the server"; exit 0' TERM INT USR1
  ((${#SOPHIA_SERVE_HOSTS[@]} > 1)) && sophia_ray_cluster
  sophia_srun --overlap --nodes=1 --ntasks=1 -w "$SERVE_HEAD" -- "${server[@]}" &
  SOPHIA_SERVER_PID=$!
  until sophia_http_ok "$url/health"; do
    kill -0 "$SOPHIA_SERVER_PID" 2>/dev/null || sophia_die "the server exited while loading $MODEL (see above)"
    ((SECONDS < deadline)) || sophia_die "no answer from $url/health within ${HEALTH_TIMEOUT_S:-3600} s"
    sleep 5
  done
  printf '%s\n' "$url" >"$ENDPOINT_FILE.tmp"
  mv "$ENDPOINT_FILE.tmp" "$ENDPOINT_FILE"
  sophia_log "SOPHIA-SERVE-READY $url"
  local rc=0
  wait "$SOPHIA_SERVER_PID" || rc=$?
  SOPHIA_SERVER_PID=
  sophia_die "the server stopped by itself (exit $rc)"
}
