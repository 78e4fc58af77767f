#!/usr/bin/env bash
# The whole SOPHIA round as a chain of SLURM jobs, submitted from a login node (not with sbatch):
#
#   convert ─▶ sft ─▶ sft-convert ───────────────────────────────▶ update ─▶ export
#                 └─▶ caption[0..n-1] ─▶ reason[0..n-1] ─▶ merge-pack ─┘
#
#   convert      HF_DIR -> model.mcore_dir of CONFIG (parallel.tp/pp, model.spec of CONFIG)
#   sft          warm-up SFT on SFT_DATA (train.mode=sft), exports WORK/sft_hf
#   sft-convert  WORK/sft_hf -> WORK/sft_mcore, the start of the SOPHIA update
#   caption      the warmed-up policy captions the rollout inputs (array of SHARDS tasks)
#   reason       the reasoning LLM answers from the captions and verifies (same SHARDS tasks)
#   merge-pack   merge the task stores, select (Eq. 6), export, pack the training mix
#   update       the SOPHIA update (train.mode=sophia) on the packed data; the trainer exports the
#                final model to checkpoint.export_hf itself, in-process, at the end
#   export       checks the exported model (sophia-convert inspect checkpoint.export_hf)
#
#   HF_DIR=checkpoints/InternVL3-38B SFT_DATA=data/warmup_packed launchers/pipeline.sh
#   DRY=1 HF_DIR=... launchers/pipeline.sh          # print the sbatch commands, submit nothing
#   PIPELINE_STAGES="caption reason merge-pack update" launchers/pipeline.sh   # resume a round
#
# Each job waits for the ones it needs with --dependency=afterok:<id> (ids from sbatch --parsable);
# a stage left out of PIPELINE_STAGES is taken as done and nothing waits for it. A failed job
# cancels the jobs that wait for it (they can never start); fix the cause and resubmit from there.
#
# Knobs (environment):
#   CONFIG            training + pack recipe (default configs/internvl3_38b.yaml)
#   OVERRIDES         overrides for the training jobs (sft and update)
#   ROLLOUT_CONFIG    recipe with the rollout: section (default CONFIG)
#   ROLLOUT_OVERRIDES overrides for the caption / reason / merge-pack jobs (pack.* keys too; the
#                     pack stage reads the pack: section of CONFIG)
#   HF_DIR            the HF InternVL to start from (needed by `convert`)
#   SFT_DATA          packed warm-up dataset (needed by `sft`; general VQA incl. image description)
#   SFT_STEPS         warm-up steps (default: train.steps of CONFIG)
#   SHARDS            tasks of the caption and reason arrays (default 8)
#   WORK              directory of the warm-up's outputs (default runs/<recipe name>)
#   TRAIN_SCRIPT      launchers/train_38b.sh (default) or launchers/train_8b.sh
#   PIPELINE_STAGES   which stages to submit (default: all, in the order above)
#   SBATCH_ARGS       extra sbatch options for every job, e.g. "--account=proj --qos=normal"
#   DRY=1             print the commands instead of submitting
#   SERVE=1           served reasoners: one launchers/serve.sh job per model of SERVED_ROLES (after the
#                     caption array), the reason array (no GPUs) talking to them through their endpoint
#                     files (engine openai), and a teardown job that cancels the servers when the
#                     reason array has ended, however it ended:
#
#     caption[0..n-1] ─▶ serve-reasoner.easy ┐
#                   ├──▶ serve-reasoner.hard ┼─(started)─▶ reason[0..n-1] ─▶ merge-pack ...
#                   └────────────────────────┘                          └─▶ teardown (scancel)
#
#   SERVED_ROLES      engines to serve with SERVE=1 (default "reasoner.easy reasoner.hard"; a role whose
#                     model is not set in ROLLOUT_CONFIG is skipped)
#   GPUS_PER_NODE     GPUs of a node, to size each server: ceil(tp*pp / GPUS_PER_NODE) nodes (default 8)
#   SERVE_SBATCH_ARGS extra sbatch options of the server jobs, e.g. "--time=48:00:00"
#   REASON_SBATCH_ARGS extra sbatch options of the reason array (SERVE=1 default: --gpus-per-node=0)
# and those of the launchers (PYTHON, CONTAINER_IMAGE, ...; launchers/common.sh), which every job
# inherits from this shell. PYTHON must work here too: recipe values are read with it.
set -euo pipefail

SOPHIA_ROOT=${SOPHIA_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
# shellcheck source=launchers/common.sh
source "$SOPHIA_ROOT/launchers/common.sh"
cd "$SOPHIA_ROOT" || exit
PYTHON=${PYTHON:-python}
export PYTHONPATH="$SOPHIA_ROOT${PYTHONPATH:+:$PYTHONPATH}" SOPHIA_ROOT PYTHON

CONFIG=${CONFIG:-configs/internvl3_38b.yaml}
ROLLOUT_CONFIG=${ROLLOUT_CONFIG:-$CONFIG}
SHARDS=${SHARDS:-8}
TRAIN_SCRIPT=${TRAIN_SCRIPT:-launchers/train_38b.sh}
read -r -a stages <<<"${PIPELINE_STAGES:-convert sft sft-convert caption reason merge-pack update export}"
read -r -a sbatch_args <<<"${SBATCH_ARGS:-}"
[[ $SHARDS =~ ^[1-9][0-9]*$ ]] || sophia_die "SHARDS must be a positive integer (got '$SHARDS')"

# The recipe decides the converted layout and where the model goes; read it once, here.
{
  read -r name
  read -r mcore_dir
  read -r tp
  read -r pp
  read -r spec
  read -r steps
  read -r export_hf
  read -r first_stage
  read -r last_stage
} < <(sophia_recipe_get name model.mcore_dir parallel.tp parallel.pp model.spec train.steps \
        checkpoint.export_hf parallel.first_stage_layers parallel.last_stage_layers)
[[ -n $mcore_dir && -n $tp && -n $pp ]] || sophia_die "could not read model.mcore_dir / parallel.* from $CONFIG"
WORK=${WORK:-runs/${name:-sophia}}
# Conversion places layers on stages as the trainer will (an uneven split when the recipe has one).
split=()
[[ -n $first_stage && $first_stage != auto ]] && split+=(--first-stage-layers "$first_stage")
[[ -n $last_stage && $last_stage != auto ]] && split+=(--last-stage-layers "$last_stage")
[[ $first_stage == auto || $last_stage == auto ]] &&
  sophia_die "parallel.first_stage_layers=auto is a planning mode: copy the split sophia-train --dry-run proposes"

wanted() { local s; for s in "${stages[@]}"; do [[ $s == "$1" ]] && return 0; done; return 1; }

declare -A JOB=()
# submit STAGE "DEPENDENCY STAGES" VAR=VALUE... -- SBATCH OPTIONS AND SCRIPT...
# A dependency is STAGE (afterok: it succeeded), after:STAGE (it started) or afterany:STAGE (it ended).
# Dependencies on stages that were not submitted are dropped (those stages are taken as done).
submit() {
  local stage=$1 dep kind name ids=() env=() cmd id
  declare -A by_kind=()
  for dep in $2; do
    kind=afterok name=$dep
    if [[ $dep == *:* ]]; then kind=${dep%%:*} name=${dep#*:}; fi
    [[ -n ${JOB[$name]:-} ]] && by_kind[$kind]+=:${JOB[$name]}
  done
  for kind in afterok after afterany; do [[ -n ${by_kind[$kind]:-} ]] && ids+=("$kind${by_kind[$kind]}"); done
  shift 2
  while [[ $1 != -- ]]; do env+=("$1"); shift; done
  shift
  # STAGES is the rollout launchers' knob: reset it so this shell's value cannot leak into a job.
  cmd=(env STAGES= "${env[@]}" sbatch --parsable --chdir="$SOPHIA_ROOT" "${sbatch_args[@]}")
  if ((${#ids[@]})); then
    cmd+=("--dependency=$(IFS=,; echo "${ids[*]}")")
  fi
  cmd+=("$@")
  if [[ ${DRY:-0} == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    JOB[$stage]="ID_$stage"  # a stand-in for the id sbatch would print
  else
    id=$("${cmd[@]}")
    JOB[$stage]=${id%%;*}  # --parsable prints "id" or "id;cluster"
    sophia_log "submitted $stage: job ${JOB[$stage]}"
  fi
}

[[ ${DRY:-0} == 1 ]] || mkdir -p logs  # the launchers' --output=logs/...; sbatch does not create it

policy_hf=${HF_DIR:-}
update_mcore=$mcore_dir
if wanted convert; then
  [[ -n ${HF_DIR:-} ]] || sophia_die "HF_DIR is required for the convert stage"
  submit convert "" -- launchers/convert.sh hf-to-mcore --hf-dir "$HF_DIR" --out-dir "$mcore_dir" \
    --tp "$tp" --pp "$pp" "${split[@]}" --spec "${spec:-te}"
fi
if wanted sft || wanted sft-convert; then
  policy_hf=$WORK/sft_hf
  update_mcore=$WORK/sft_mcore
fi
if wanted sft; then
  [[ -n ${SFT_DATA:-} ]] || sophia_die "SFT_DATA (a packed warm-up dataset) is required for the sft stage"
  submit sft "convert" CONFIG="$CONFIG" OVERRIDES="${OVERRIDES:-} train.mode=sft data.path=$SFT_DATA \
train.steps=${SFT_STEPS:-$steps} checkpoint.save_dir=$WORK/sft checkpoint.export_hf=$policy_hf \
logging.metrics_file=$WORK/sft_metrics.jsonl logging.tensorboard_dir=$WORK/sft_tensorboard" \
    -- --job-name=sophia-sft "$TRAIN_SCRIPT"
fi
if wanted sft-convert; then
  submit sft-convert "sft" -- launchers/convert.sh hf-to-mcore --hf-dir "$policy_hf" \
    --out-dir "$update_mcore" --tp "$tp" --pp "$pp" "${split[@]}" --spec "${spec:-te}"
fi
# The captioner is the policy: the warmed-up model when there is a warm-up, else the recipe's.
captioner=()
if wanted sft || wanted sft-convert; then captioner=("rollout.captioner.model=$policy_hf"); fi
rollout_env=(CONFIG="$ROLLOUT_CONFIG" OVERRIDES="${ROLLOUT_OVERRIDES:-} ${captioner[*]}")
array=--array=0-$((SHARDS - 1))
if wanted caption; then
  submit caption "sft" "${rollout_env[@]}" -- "$array" launchers/rollout_caption.sh
fi
reason_deps=caption
reason_args=()
served=()
if [[ ${SERVE:-0} == 1 ]] && wanted reason; then
  read -r -a reason_args <<<"${REASON_SBATCH_ARGS:---gpus-per-node=0}"
  read -r -a serve_args <<<"${SERVE_SBATCH_ARGS:-}"
  for role in ${SERVED_ROLES:-reasoner.easy reasoner.hard}; do
    {
      read -r role_model
      read -r role_tp
      read -r role_pp
    } < <(CONFIG=$ROLLOUT_CONFIG OVERRIDES=${ROLLOUT_OVERRIDES:-} sophia_recipe_get "rollout.$role.model" \
            "rollout.$role.tp" "rollout.$role.pp")
    [[ -n $role_model ]] || continue
    gpus=$((${role_tp:-1} * ${role_pp:-1}))
    per_node=${GPUS_PER_NODE:-8}
    nodes=$(((gpus + per_node - 1) / per_node))
    endpoint=$WORK/serve/$role.endpoint
    submit "serve-$role" "caption" CONFIG="$ROLLOUT_CONFIG" OVERRIDES="${ROLLOUT_OVERRIDES:-}" ROLE="$role" \
      ENDPOINT_FILE="$endpoint" -- --job-name="sophia-serve-$role" --nodes="$nodes" \
      --gpus-per-node=$((gpus < per_node ? gpus : per_node)) "${serve_args[@]}" launchers/serve.sh
    served+=("serve-$role")
    reason_deps+=" after:serve-$role"
    rollout_env[1]+=" rollout.$role.engine=openai rollout.$role.endpoint_file=$endpoint \
rollout.$role.wait_for_server_s=${SERVE_WAIT_S:-7200}"
  done
  ((${#served[@]})) || sophia_die "SERVE=1 but no model set for any of: ${SERVED_ROLES:-reasoner.easy reasoner.hard}"
fi
if wanted reason; then
  submit reason "$reason_deps" "${rollout_env[@]}" -- "$array" "${reason_args[@]}" launchers/rollout_reason.sh
fi
if ((${#served[@]})); then
  servers=()
  for stage in "${served[@]}"; do servers+=("${JOB[$stage]}"); done
  submit teardown "afterany:reason" -- --job-name=sophia-teardown --nodes=1 --ntasks=1 --gpus-per-node=0 \
    --time=00:10:00 --wrap="scancel ${servers[*]}"
fi
if wanted merge-pack; then
  submit merge-pack "reason" "${rollout_env[@]}" PACK_CONFIG="$CONFIG" -- launchers/rollout_merge_pack.sh
fi
if wanted update; then
  submit update "merge-pack sft-convert convert" CONFIG="$CONFIG" \
    OVERRIDES="${OVERRIDES:-} train.mode=sophia model.mcore_dir=$update_mcore" -- "$TRAIN_SCRIPT"
fi
if wanted export; then
  [[ -n $export_hf ]] || sophia_die "checkpoint.export_hf is not set in $CONFIG: nothing to export"
  submit export "update" -- --job-name=sophia-export launchers/convert.sh inspect "$export_hf"
fi
sophia_log "pipeline: ${#JOB[@]} job(s): $(for s in "${stages[@]}"; do printf '%s=%s ' "$s" "${JOB[$s]:-}"; done)"
