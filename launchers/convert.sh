#!/usr/bin/env bash
# Checkpoint conversion on one node: `sophia-convert` with the arguments given to this script.
#
#   sbatch launchers/convert.sh hf-to-mcore --hf-dir checkpoints/InternVL3-38B \
#     --out-dir checkpoints/internvl3_38b_mcore_tp4pp2 --tp 4 --pp 2 --first-stage-layers 24 --last-stage-layers 40 --spec te
#   sbatch launchers/convert.sh mcore-to-hf --mcore-dir DIR --out-dir HF_DIR
#   sbatch launchers/convert.sh inspect checkpoints/internvl3_38b_sophia_hf
#
# The TP/PP of hf-to-mcore must be the training recipe's parallel.tp / parallel.pp, and --spec its
# model.spec (te on GPUs, local on CPU). Conversion streams tensors shard by shard (CPU only, no
# GPU, no torch.distributed), so one task suffices; memory follows the largest shard, not the model.
# Knobs: PYTHON, CONTAINER_* and SRUN_ARGS as in launchers/common.sh (CONFIG is not used).
#
#SBATCH --job-name=sophia-convert
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16        # safetensors reads and torch copies use a few threads
#SBATCH --mem=0                   # the node's memory: a 38B shard set is read with mmap
#SBATCH --time=02:00:00           # 38B: minutes on a parallel file system
#SBATCH --requeue                 # outputs appear atomically (temp dir + rename): a rerun starts clean
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

# The repository (sbatch runs a spooled copy of this file): SOPHIA_ROOT or the submit directory.
SOPHIA_ROOT=${SOPHIA_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
# shellcheck source=launchers/common.sh
source "$SOPHIA_ROOT/launchers/common.sh"

(($#)) || sophia_die "usage: sbatch launchers/convert.sh {hf-to-mcore|mcore-to-hf|verify|inspect} ARGS..."
sophia_setup
sophia_log "sophia-convert $*"
sophia_srun --nodes=1 --ntasks=1 -- "$PYTHON" -m sophia_tools.convert_cli "$@"
sophia_log "SOPHIA-LAUNCHER-OK $(sophia_job_label)"
