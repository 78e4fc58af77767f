#!/usr/bin/env bash
# SOPHIA rollout, step 1: the policy InternVL writes K captions per image (docs/ALGORITHM.md §1.1), as a SLURM
# array job. Task i of n captions the input ids that hash to shard i (`--shard i/n`), into its own
# store TASKS_DIR/<i>of<n>; the reason array continues in the same per-task stores and
# rollout_merge_pack.sh merges them into rollout.store_dir.
#
#   mkdir -p logs && CONFIG=configs/internvl3_38b.yaml sbatch --array=0-15 launchers/rollout_caption.sh
#   CONFIG=... OVERRIDES="rollout.captioner.model=runs/38b/sft_hf" sbatch launchers/rollout_caption.sh
#   # CPU, tiny models (the tests): two tasks of one CPU each
#   CONFIG=/tmp/rollout.yaml sbatch --array=0-1 --gpus-per-node=0 --cpus-per-task=1 --mem=1G \
#     launchers/rollout_caption.sh
#
# The array must be 0-<n-1> (any %limit is fine); with the default STORE_LAYOUT=per-task the reason
# array must use the same n (STORE_LAYOUT=shared: one store for all tasks, any n; common.sh).
# Knobs: CONFIG (a recipe with a rollout: section), OVERRIDES, STORE_LAYOUT, STORE_DIR, TASKS_DIR,
# STAGES (default "caption"), and the common ones in launchers/common.sh (PYTHON, CONTAINER_IMAGE).
# vLLM runs inside the task with rollout.captioner.tp GPUs; rollout nodes usually run a vLLM
# container, training nodes a Megatron one (docs/ARCHITECTURE.md).
#
#SBATCH --job-name=sophia-caption
#SBATCH --array=0-7               # n = 8 shards; scale with the input size
#SBATCH --nodes=1
#SBATCH --ntasks=1                # one vLLM engine per task; it spawns its own GPU workers
#SBATCH --gpus-per-node=4         # = rollout.captioner.tp (4 for InternVL3-38B): two tasks per node
#SBATCH --cpus-per-task=32        # image decoding and tiling, tokenisation, vLLM's scheduler
#SBATCH --mem=480G                # half an 8-GPU node's RAM: 38B weights are staged in host memory
#SBATCH --time=08:00:00
#SBATCH --signal=B:USR1@300       # to the batch shell: 5 min before the limit, requeue this task
#SBATCH --requeue                 # also on node failure; the store skips captions already written
#SBATCH --open-mode=append        # a requeued task appends to its log
#SBATCH --output=logs/%x-%A_%a.out  # %A: array job id, %a: task index; logs/ must exist
set -euo pipefail

CONFIG=${CONFIG:-configs/internvl3_38b.yaml}
# The repository (sbatch runs a spooled copy of this file): SOPHIA_ROOT or the submit directory.
SOPHIA_ROOT=${SOPHIA_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
# shellcheck source=launchers/common.sh
source "$SOPHIA_ROOT/launchers/common.sh"

sophia_setup
read -r -a stages <<<"${STAGES:-caption}"
sophia_rollout_task "${stages[@]}"
