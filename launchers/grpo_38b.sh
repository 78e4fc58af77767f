#!/usr/bin/env bash
# On-policy GRPO continuation of InternVL3-38B after SOPHIA (paper App. B.2): 8 nodes x 8 GPUs.
#
#   mkdir -p logs && sbatch launchers/grpo_38b.sh              # configs/internvl3_38b.yaml, grpo: section
#   GRPO_MCORE=checkpoints/internvl3_38b_sophia_mcore GRPO_SAVE=checkpoints/internvl3_38b_grpo \
#     sbatch launchers/grpo_38b.sh
#   # the same file on one CPU node with the tiny recipe:
#   CONFIG=configs/tiny.yaml GRPO_MCORE=.demo/sophia_mcore GRPO_SAVE=.demo/grpo_ckpt \
#     sbatch --nodes=1 --ntasks-per-node=2 --gpus-per-node=0 --cpus-per-task=1 launchers/grpo_38b.sh
#
# Starts from the SOPHIA checkpoint converted back to Megatron (GRPO_MCORE: sophia-convert hf-to-mcore
# of checkpoint.export_hf of the SOPHIA run) and checkpoints to its own GRPO_SAVE directory, so the
# SOPHIA run's checkpoints are never touched. The recipe's grpo: section holds the paper's settings
# (64 questions x 8 rollouts, clip 0.2, no KL, lr 5e-7); grpo.questions must exist (sophia-rollout
# filter). Rank 0 also runs the generator (vLLM colocated on its node's GPUs, asleep during each
# update, given the new weights after it) and the verifier. SIGUSR1 before the time limit: the loop
# checkpoints at the next step boundary and exits 0, this script requeues, the job resumes (the
# interrupted step's rollouts are regenerated identically from their seeds).
# Knobs (CONFIG, OVERRIDES, PYTHON, CONTAINER_*, NCCL_*, REQUEUE, MAX_REQUEUES ...): launchers/common.sh.
#
#SBATCH --job-name=sophia-grpo-38b
#SBATCH --nodes=8                 # 64 GPUs: TP=8 x PP=4 x DP=2, as the SOPHIA update
#SBATCH --ntasks-per-node=8       # one rank per GPU
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16        # image decode, verifier workers on rank 0
#SBATCH --mem=0                   # all of each node's memory
#SBATCH --exclusive               # whole nodes
#SBATCH --time=04:00:00           # chained by requeue
#SBATCH --signal=USR1@600         # 10 min before the limit: checkpoint and exit
#SBATCH --requeue                 # requeue on node failure; the script requeues on SIGUSR1
#SBATCH --open-mode=append        # a requeued run appends to the same log
#SBATCH --output=logs/%x-%j.out   # logs/ must exist
set -euo pipefail

CONFIG=${CONFIG:-configs/internvl3_38b.yaml}
SOPHIA_ROOT=${SOPHIA_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
# shellcheck source=launchers/common.sh
source "$SOPHIA_ROOT/launchers/common.sh"

GRPO_MCORE=${GRPO_MCORE:-checkpoints/internvl3_38b_sophia_mcore}
GRPO_SAVE=${GRPO_SAVE:-checkpoints/internvl3_38b_grpo}
sophia_setup
grpo_steps=$(sophia_recipe_get grpo.steps)
[[ $grpo_steps =~ ^[0-9]+$ ]] || sophia_die "could not read grpo.steps from $CONFIG (got '$grpo_steps')"
# train.steps mirrors grpo.steps so that the shared requeue logic knows when the run is done.
OVERRIDES="train.mode=grpo train.steps=$grpo_steps model.mcore_dir=$GRPO_MCORE checkpoint.save_dir=$GRPO_SAVE \
checkpoint.export_hf=${GRPO_EXPORT:-${GRPO_SAVE}_hf} ${OVERRIDES:-}"
export OVERRIDES
read -r -a SOPHIA_OVERRIDES <<<"$OVERRIDES"
sophia_train
