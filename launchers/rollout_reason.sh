#!/usr/bin/env bash
# SOPHIA rollout, steps 2-3: a text reasoning LLM (QwQ-32B / DeepSeek-R1, any vLLM model) writes N
# slow-thinking trajectories per caption, and each trajectory is verified (outcome reward, Eq. 4;
# caption reward, Eq. 5). SLURM array job, one task per shard, run after rollout_caption.sh with the
# SAME number of tasks: task i continues in TASKS_DIR/<i>of<n>, where caption task i wrote the
# captions of the ids it owns (any number with STORE_LAYOUT=shared; see launchers/common.sh).
#
#   sbatch --array=0-7 --dependency=afterok:<caption job> launchers/rollout_reason.sh
#   STAGES=reason sbatch ...        # leave verification to the merge job
#
# Verification runs here, in parallel over the tasks (it is CPU-bound: symbolic equivalence in
# killable worker processes, rollout.verifier.workers of them); scoring again after the merge
# finds nothing left to do. Knobs as in rollout_caption.sh; STAGES defaults to "reason score".
#
#SBATCH --job-name=sophia-reason
#SBATCH --array=0-7               # must equal the caption array's 0-<n-1> (STORE_LAYOUT=per-task)
#SBATCH --nodes=1                 # QwQ-32B (tp 4) and DeepSeek-R1 (tp 8 on H200) fit one node;
#                                 # R1 on H100 needs two nodes (docs/CLUSTER.md)
#SBATCH --ntasks=1                # one process: the easy engine, then the hard one
#SBATCH --gpus-per-node=8         # the largest engine's tp (rollout.reasoner.hard.tp)
#SBATCH --cpus-per-task=32        # tokenisation, vLLM's scheduler, verifier worker processes
#SBATCH --mem=0                   # the node's memory: R1's weights are staged in host memory
#SBATCH --time=12:00:00           # N=8 trajectories of up to 32k tokens per caption: the long stage
#SBATCH --signal=B:USR1@300       # to the batch shell: 5 min before the limit, requeue this task
#SBATCH --requeue                 # the store skips trajectories already written
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%A_%a.out
set -euo pipefail

CONFIG=${CONFIG:-configs/internvl3_38b.yaml}
# The repository (sbatch runs a spooled copy of this file): SOPHIA_ROOT or the submit directory.
SOPHIA_ROOT=${SOPHIA_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
# shellcheck source=launchers/common.sh
source "$SOPHIA_ROOT/launchers/common.sh"

sophia_setup
read -r -a stages <<<"${STAGES:-reason score}"
sophia_rollout_task "${stages[@]}"
