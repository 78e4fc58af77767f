#!/usr/bin/env bash
# sophia-eval on a cluster: the paper's evaluation protocol, one SLURM array task per benchmark, then
# one small job that merges the per-benchmark results into OUT/results.{json,md,png}.
#
#   B=mmmu=/data/MMMU,mmmu_pro_vision=/data/MMMU_Pro/vision,mathvista=/data/MathVista,...
#   MODEL=checkpoints/internvl3_38b_sophia_hf OUT=runs/eval/38b_sophia BENCHMARKS=$B \
#     sbatch --array=0-7 launchers/eval.sh                      # task i evaluates the i-th benchmark
#   MODEL=... OUT=runs/eval/38b_sophia STAGE=report \
#     sbatch --dependency=afterok:<array job> launchers/eval.sh  # the merge
#   sophia-eval compare runs/eval/38b_base runs/eval/38b_sophia  # then, on any node
#
# Knobs: MODEL (HF checkpoint dir; required), OUT (results dir; required), BENCHMARKS (comma-separated
# NAME[:FORMAT]=PATH; required for the array), STAGE (run | report; default run), SAMPLES (K per
# question; default the recipe's eval.samples), JUDGE_URL or JUDGE_ENDPOINT_FILE (an OpenAI-compatible
# server of the extractor/judge, e.g. launchers/serve.sh with Qwen2.5-72B-Instruct: switches on the
# paper's LLM extraction and judging), CONFIG, OVERRIDES, and the common ones (launchers/common.sh).
# The array must have one task per benchmark; without an array the job evaluates them all in turn.
# A requeued task resumes from its store: finished responses and verdicts are never recomputed.
#
#SBATCH --job-name=sophia-eval
#SBATCH --array=0-7               # one task per benchmark: the paper's eight
#SBATCH --nodes=1
#SBATCH --ntasks=1                # one vLLM engine per task
#SBATCH --gpus-per-node=4         # = eval.policy.tp (4 for a 38B policy in bf16; 1 for 8B)
#SBATCH --cpus-per-task=32        # image decoding, tokenisation, verifier workers
#SBATCH --mem=480G                # 38B weights are staged in host memory
#SBATCH --time=08:00:00
#SBATCH --signal=B:USR1@300       # to the batch shell: 5 min before the limit, requeue this task
#SBATCH --requeue                 # also on node failure; the store skips what is done
#SBATCH --open-mode=append        # a requeued task appends to its log
#SBATCH --output=logs/%x-%A_%a.out  # %A: array job id, %a: task index; logs/ must exist
set -euo pipefail

CONFIG=${CONFIG:-configs/internvl3_38b.yaml}
# The repository (sbatch runs a spooled copy of this file): SOPHIA_ROOT or the submit directory.
SOPHIA_ROOT=${SOPHIA_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
# shellcheck source=launchers/common.sh
source "$SOPHIA_ROOT/launchers/common.sh"

sophia_setup
[[ -n ${OUT:-} ]] || sophia_die "OUT is required: the evaluation's results directory"

if [[ ${STAGE:-run} == report ]]; then
  sophia_python -m sophia_tools.eval_cli report "$OUT" || sophia_die "sophia-eval report $OUT failed"
  sophia_log "results in $OUT/results.md"
  sophia_log "SOPHIA-LAUNCHER-OK $(sophia_job_label)"
  exit 0
fi
[[ ${STAGE:-run} == run ]] || sophia_die "STAGE must be run or report, not '$STAGE'"
[[ -n ${MODEL:-} ]] || sophia_die "MODEL is required: the HF checkpoint directory to evaluate"
IFS=, read -r -a benchmarks <<<"${BENCHMARKS:-}"
((${#benchmarks[@]})) || sophia_die "BENCHMARKS is required: NAME[:FORMAT]=PATH[,NAME=PATH...]"

selected=("${benchmarks[@]}")
if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
  count=${SLURM_ARRAY_TASK_COUNT:-${#benchmarks[@]}}
  ((count == ${#benchmarks[@]})) \
    || sophia_die "the array has $count tasks but BENCHMARKS names ${#benchmarks[@]}: use --array=0-$((${#benchmarks[@]} - 1))"
  selected=("${benchmarks[$SLURM_ARRAY_TASK_ID]}")
fi

scoring=()
if [[ -z ${JUDGE_URL:-} && -n ${JUDGE_ENDPOINT_FILE:-} ]]; then
  [[ -s $JUDGE_ENDPOINT_FILE ]] || sophia_die "JUDGE_ENDPOINT_FILE=$JUDGE_ENDPOINT_FILE is empty: is the judge served?"
  JUDGE_URL=$(<"$JUDGE_ENDPOINT_FILE")
fi
if [[ -n ${JUDGE_URL:-} ]]; then
  scoring=(eval.extract=llm eval.judge=llm "eval.llm.base_url=$JUDGE_URL")
  sophia_log "LLM extraction and judging through $JUDGE_URL (paper protocol)"
else
  sophia_log "no JUDGE_URL: answers extracted and checked by rules only"
fi
samples=()
[[ -n ${SAMPLES:-} ]] && samples=(--samples "$SAMPLES")

# First: bash's default action for SIGUSR1 would end the task without a requeue.
trap sophia_on_time_limit USR1
for benchmark in "${selected[@]}"; do
  sophia_log "evaluating $MODEL on $benchmark -> $OUT"
  # In the background + wait, so the USR1 trap runs at once (see sophia_rollout_task).
  sophia_srun --nodes=1 --ntasks=1 -- "$PYTHON" -m sophia_tools.eval_cli run --config "$CONFIG" \
    --model "$MODEL" --benchmarks "$benchmark" --out "$OUT" "${samples[@]}" "${SOPHIA_OVERRIDES[@]}" \
    "${scoring[@]}" &
  wait $! || sophia_die "sophia-eval run failed on $benchmark (exit $?)"
done
sophia_log "SOPHIA-LAUNCHER-OK $(sophia_job_label)"
