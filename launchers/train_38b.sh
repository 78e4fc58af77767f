#!/usr/bin/env bash
# SOPHIA update (or warm-up SFT) of InternVL3-38B on Megatron-Core: 8 nodes x 8 GPUs.
#
#   mkdir -p logs && sbatch launchers/train_38b.sh                       # configs/internvl3_38b.yaml
#   OVERRIDES="train.mode=sft data.path=data/sft_packed" sbatch launchers/train_38b.sh
#   CONTAINER_IMAGE=nvcr.io#nvidia/pytorch:25.04-py3 CONTAINER_MOUNTS=/lustre:/lustre \
#     sbatch launchers/train_38b.sh
#   # the same file on one CPU node with the tiny recipe (how the tests run it):
#   CONFIG=configs/tiny.yaml sbatch --nodes=1 --ntasks-per-node=2 --gpus-per-node=0 \
#     --cpus-per-task=1 launchers/train_38b.sh
#
# One srun starts one process per GPU; each reads its rank from SLURM (SLURM_PROCID, SLURM_NTASKS,
# SLURM_LOCALID) and meets the others at MASTER_ADDR:MASTER_PORT (the first node). The recipe's
# parallel.tp x parallel.pp must divide the number of tasks; the rest is data parallelism
# (configs/internvl3_38b.yaml: TP=4 x PP=2 (24 + 40 layers) in a node, DP=8 over 64 GPUs).
#
# Before the time limit SLURM sends SIGUSR1 (--signal); the trainer checkpoints at the next step
# boundary and exits 0, and this script requeues the job, which resumes from checkpoint.save_dir.
# Knobs (CONFIG, OVERRIDES, PYTHON, CONTAINER_*, NCCL_*, REQUEUE, MAX_REQUEUES ...): launchers/common.sh.
# Options given to sbatch on the command line override the #SBATCH lines below.
#
#SBATCH --job-name=sophia-train-38b
#SBATCH --nodes=8                 # 64 GPUs: TP=4 x PP=2 x DP=8
#SBATCH --ntasks-per-node=8       # one rank per GPU
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16        # data loading (image decode + tiling) runs in the rank's process
#SBATCH --mem=0                   # all of each node's memory (pinned buffers, checkpoint staging)
#SBATCH --exclusive               # whole nodes: NVLink/IB bandwidth is not shared with other jobs
#SBATCH --time=04:00:00           # short allocations chained by requeue schedule sooner than 48 h ones
#SBATCH --signal=USR1@600         # 10 min before the limit: checkpoint a 38B model and exit
#SBATCH --requeue                 # SLURM may requeue on node failure; the script requeues on SIGUSR1
#SBATCH --open-mode=append        # a requeued run appends to the same log instead of truncating it
#SBATCH --output=logs/%x-%j.out   # logs/ must exist (sbatch does not create it); %j: job id
set -euo pipefail

CONFIG=${CONFIG:-configs/internvl3_38b.yaml}
# sbatch runs a copy of this file from its spool directory: the repository is SOPHIA_ROOT or the
# directory sbatch was called from, not this file's directory.
SOPHIA_ROOT=${SOPHIA_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
# shellcheck source=launchers/common.sh
source "$SOPHIA_ROOT/launchers/common.sh"

sophia_setup
sophia_train
