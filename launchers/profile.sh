#!/usr/bin/env bash
# Measured benchmarks on cluster hardware: `sophia-profile <what> [options]`, JSON on stdout (the
# job log); see docs/BENCHMARKS.md.
#
#   sbatch launchers/profile.sh train --preset 38b-reduced --recipes bf16,delayed,tensorwise,blockwise \
#     --tp 8 --plot logs/train_fp8.png
#   sbatch launchers/profile.sh rollout ...
#   sbatch --gpus-per-node=0 launchers/profile.sh packing
#   sbatch --gpus-per-node=0 launchers/profile.sh conversion
#
# One task on one node: `sophia-profile train` starts its own ranks (torch.distributed.run, one
# per GPU, --tp of them) and runs each configuration in a fresh process group; the others are
# single-process. Knobs: PYTHON, CONTAINER_*, SRUN_ARGS, NCCL_* (launchers/common.sh). CONFIG and
# OVERRIDES are not used: the benchmark's own options follow its name.
#
#SBATCH --job-name=sophia-profile
#SBATCH --nodes=1
#SBATCH --ntasks=1                # the benchmark spawns its per-GPU ranks itself
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --mem=0
#SBATCH --exclusive               # timings on a shared node would measure the neighbours too
#SBATCH --time=01:00:00
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

# The repository (sbatch runs a spooled copy of this file): SOPHIA_ROOT or the submit directory.
SOPHIA_ROOT=${SOPHIA_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
# shellcheck source=launchers/common.sh
source "$SOPHIA_ROOT/launchers/common.sh"

(($#)) || sophia_die "usage: sbatch launchers/profile.sh {train|rollout|packing|conversion} [options]"
sophia_setup
sophia_log "sophia-profile $*"
# NCCL and thread settings for the ranks the train benchmark starts; harmless for the others.
sophia_dist_env
sophia_srun --nodes=1 --ntasks=1 -- "$PYTHON" -m sophia_tools.profile_cli "$@"
sophia_log "SOPHIA-LAUNCHER-OK $(sophia_job_label)"
