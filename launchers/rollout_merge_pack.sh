#!/usr/bin/env bash
# SOPHIA rollout, step 4 and the hand-back to training: merge the array tasks' stores, score what
# is left, select (Eq. 6) and export the selected trajectories, then pack the training mix.
# Runs once, after the reason array (`--dependency=afterok:<reason job>`).
#
#   sbatch --dependency=afterok:<reason job> launchers/rollout_merge_pack.sh
#   STAGES="merge" sbatch --dependency=afterok:<caption job> launchers/rollout_merge_pack.sh
#
# Stages (STAGES, default "merge score select pack"):
#   merge   sophia-rollout merge --sources TASKS_DIR/* --dest STORE_DIR; refuses a key stored twice
#           and an input id that is neither stored nor rejected (a task that did not finish);
#           nothing to do with STORE_LAYOUT=shared (see launchers/common.sh)
#   score   verify the trajectories not yet scored (none when the reason tasks scored)
#   select  keep the shortest correct trajectories of captions with reward >= alpha; unsharded, so
#           it exports rollout.selected_out (default STORE_DIR/selected.parquet)
#   pack    sophia-rollout pack with PACK_CONFIG (default CONFIG): its pack.sources name the export
# Knobs: CONFIG, OVERRIDES (passed to every stage: use full keys), PACK_CONFIG, STORE_LAYOUT,
# STORE_DIR, TASKS_DIR (as in rollout_caption.sh), PACK_ARGS (extra `pack` options, e.g. --force), and the
# common ones (launchers/common.sh). CPU only.
#
#SBATCH --job-name=sophia-merge-pack
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=32        # verifier workers and tokenisation
#SBATCH --mem=0
#SBATCH --time=08:00:00
#SBATCH --requeue                 # merge/score/select resume; pack writes OUT atomically, so an
#                                 # interrupted pack left nothing and simply runs again
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

CONFIG=${CONFIG:-configs/internvl3_38b.yaml}
# The repository (sbatch runs a spooled copy of this file): SOPHIA_ROOT or the submit directory.
SOPHIA_ROOT=${SOPHIA_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
# shellcheck source=launchers/common.sh
source "$SOPHIA_ROOT/launchers/common.sh"

sophia_setup
sophia_store_dirs
read -r -a stages <<<"${STAGES:-merge score select pack}"
read -r -a pack_args <<<"${PACK_ARGS:-}"
for stage in "${stages[@]}"; do
  case $stage in
    merge)
      if [[ $STORE_LAYOUT == shared ]]; then
        sophia_log "STORE_LAYOUT=shared: the tasks wrote into $STORE_DIR; nothing to merge"
        continue
      fi
      shopt -s nullglob
      sources=("$TASKS_DIR"/*of*)
      shopt -u nullglob
      ((${#sources[@]})) || sophia_die "no task stores in $TASKS_DIR (did the array jobs run?)"
      # Stores of an earlier round with another array size would hold the same keys twice.
      sizes=$(printf '%s\n' "${sources[@]##*of}" | sort -u | paste -sd' ')
      [[ $sizes != *' '* ]] \
        || sophia_die "$TASKS_DIR holds task stores of arrays of different sizes ($sizes): remove the stale ones"
      sophia_log "merging ${#sources[@]} task stores into $STORE_DIR"
      sophia_srun --nodes=1 --ntasks=1 -- "$PYTHON" -m sophia_tools.rollout_cli merge --config "$CONFIG" \
        "${SOPHIA_OVERRIDES[@]}" --sources "${sources[@]}" --dest "$STORE_DIR"
      ;;
    score | select | stats)
      sophia_srun --nodes=1 --ntasks=1 -- "$PYTHON" -m sophia_tools.rollout_cli "$stage" --config "$CONFIG" \
        "${SOPHIA_OVERRIDES[@]}" "rollout.store_dir=$STORE_DIR"
      ;;
    pack)
      sophia_srun --nodes=1 --ntasks=1 -- "$PYTHON" -m sophia_tools.rollout_cli pack --config "${PACK_CONFIG:-$CONFIG}" \
        "${SOPHIA_OVERRIDES[@]}" "${pack_args[@]}"
      ;;
    *) sophia_die "unknown stage '$stage' (merge, score, select, stats, pack)" ;;
  esac
done
sophia_log "SOPHIA-LAUNCHER-OK $(sophia_job_label)"
