"""The SLURM launchers on a real one-node SLURM cluster (``.ci/slurm/setup.sh``), with the tiny recipe.

What runs: ``bash -n`` and ``shellcheck`` on every launcher; ``pipeline.sh`` in dry-run mode; then
real jobs on a private cluster started for this session: the very ``train_38b.sh`` that drives 64
GPUs, resized on the command line to two CPU tasks (a 2-rank TP=2 training run that checkpoints);
a preemption drill (``scancel --signal=USR1`` mid-run: the trainer checkpoints, the job requeues
itself and finishes from the checkpoint); a two-task caption array with the Transformers engine
and the merge job after it (``--dependency=afterok``).

Needs root (apt, munge, slurmd), as in CI; nothing here skips. Jobs get ``--output`` in a temp
dir; their exit status comes from ``sbatch --wait`` (no accounting database here) and the success
marker the launchers print last (a job cancelled before it ran also "exits" 0).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.multirank import REPO

pytestmark = pytest.mark.slow

LAUNCHERS = sorted((REPO / "launchers").glob("*.sh"))
CI_SCRIPTS = sorted((REPO / ".ci" / "slurm").glob("*.sh"))
OK = "SOPHIA-LAUNCHER-OK"
# The GPU headers resized for this CPU node: command-line options win over #SBATCH lines.
CPU = ["--nodes=1", "--gpus-per-node=0", "--cpus-per-task=1", "--mem=1G", "--time=15"]


def _apt_install(package: str, binary: str) -> str:
    if shutil.which(binary) is None:
        assert os.geteuid() == 0, f"{binary} is missing and only root can apt-get install {package}"
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
        if subprocess.run(install, env=env, stdin=subprocess.DEVNULL, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-qq"], env=env, stdin=subprocess.DEVNULL, check=True,
                           capture_output=True)
            subprocess.run(install, env=env, stdin=subprocess.DEVNULL, check=True, capture_output=True)
    path = shutil.which(binary)
    assert path, f"{binary} not found after installing {package}"
    return path


# ---------------------------------------------------------------- static checks


def test_launchers_exist():
    names = {path.name for path in LAUNCHERS}
    assert names >= {"common.sh", "train_38b.sh", "train_8b.sh", "rollout_caption.sh", "rollout_reason.sh",
                     "rollout_merge_pack.sh", "convert.sh", "profile.sh", "pipeline.sh"}
    for path in LAUNCHERS:
        text = path.read_text()
        assert "set -euo pipefail" in text or path.name == "common.sh", path
        if path.name != "common.sh":
            assert os.access(path, os.X_OK), f"{path} is not executable"


@pytest.mark.parametrize("script", LAUNCHERS + CI_SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_shellcheck_clean():
    shellcheck = _apt_install("shellcheck", "shellcheck")
    scripts = [str(path.relative_to(REPO)) for path in LAUNCHERS + CI_SCRIPTS]
    # -x follows `source launchers/common.sh`, resolved from the repository root.
    proc = subprocess.run([shellcheck, "-x", *scripts], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_pipeline_dry_run_chains_every_stage():
    env = {**os.environ, "DRY": "1", "PYTHON": sys.executable, "HF_DIR": "/models/InternVL3-38B",
           "SFT_DATA": "data/warmup_packed", "SHARDS": "4", "SBATCH_ARGS": "--account=proj"}
    proc = subprocess.run([str(REPO / "launchers" / "pipeline.sh")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 8 and all(" sbatch --parsable " in line and "--account=proj" in line for line in lines)
    scripts = [re.search(r"launchers/(\w+\.sh)", line).group(1) for line in lines]
    assert scripts == ["convert.sh", "train_38b.sh", "convert.sh", "rollout_caption.sh", "rollout_reason.sh",
                       "rollout_merge_pack.sh", "train_38b.sh", "convert.sh"]
    deps = [re.search(r"--dependency=afterok:(\S+)", line) for line in lines]
    assert deps[0] is None
    assert [d.group(1) for d in deps[1:]] == ["ID_convert", "ID_sft", "ID_sft", "ID_caption", "ID_reason",
                                              "ID_merge-pack:ID_sft-convert:ID_convert", "ID_update"]
    # the layout of configs/internvl3_38b.yaml, with its uneven 24 + 40 split
    assert "--tp 4 --pp 2 --first-stage-layers 24 --last-stage-layers 40 --spec te" in lines[0]
    assert "train.mode=sft" in lines[1] and "data.path=data/warmup_packed" in lines[1]
    assert lines[3].count("--array=0-3") == 1 and "--array=0-3" in lines[4]
    assert "train.mode=sophia" in lines[6] and "model.mcore_dir=runs/internvl3_38b/sft_mcore" in lines[6]


# ---------------------------------------------------------------- the cluster


def _free_port_pair() -> int:
    """A port p with p and p+1 free (slurmctld, slurmd), away from a system SLURM's 6817/6818."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A private one-node cluster for this session; its daemons are stopped at teardown."""
    root = tmp_path_factory.mktemp("slurm")
    ci_env = {**os.environ, "SLURM_CI_DIR": str(root / "cluster"), "SLURM_CI_PORT": str(_free_port_pair())}
    setup = subprocess.run([str(REPO / ".ci" / "slurm" / "setup.sh")], env=ci_env, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=900)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    conf = setup.stdout.strip().splitlines()[-1]
    assert Path(conf).is_file()
    logs = root / "logs"
    logs.mkdir()
    try:
        yield {"conf": conf, "logs": logs, "root": root}
    finally:
        subprocess.run([str(REPO / ".ci" / "slurm" / "stop.sh")], env={**ci_env, "PURGE": "0"},
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=120)


def job_env(slurm, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(SLURM_CONF=slurm["conf"], SOPHIA_ROOT=str(REPO), PYTHON=sys.executable, OMP_NUM_THREADS="1",
               PYTHONWARNINGS="ignore", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def sbatch(slurm, script: str, *options: str, args: tuple[str, ...] = (), wait: bool = True,
           timeout: float = 600, **env: str) -> tuple[int, str]:
    """Submit ``launchers/<script> args``; returns (exit code, job id) -- ``sbatch --wait``'s exit code."""
    cmd = ["sbatch", "--parsable", *(["--wait"] if wait else []), *options, str(REPO / "launchers" / script),
           *args]
    proc = subprocess.run(cmd, cwd=slurm["root"], env=job_env(slurm, **env), capture_output=True, text=True,
                          timeout=timeout)
    job = proc.stdout.split(";")[0].split()[0] if proc.stdout.strip() else ""
    assert job, f"sbatch refused {script}: {proc.stderr}"
    return proc.returncode, job


def log_of(slurm, name: str) -> str:
    paths = sorted(slurm["logs"].glob(name))
    assert paths, f"no log {name} in {slurm['logs']}: {sorted(p.name for p in slurm['logs'].iterdir())}"
    return "\n".join(path.read_text(errors="replace") for path in paths)


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def training_inputs(slurm, tiny_root, tmp_path_factory):
    """The tiny InternVL converted at TP=2 by ``convert.sh`` (a real job) and a packed dataset."""
    from rollout.pack.build import pack_main
    from tests.sophia_megatron.conftest import write_samples

    root = tmp_path_factory.mktemp("launch_train")
    mcore = root / "mcore_tp2"
    rc, job = sbatch(slurm, "convert.sh", *CPU, "--ntasks=1", f"--output={slurm['logs']}/convert-%j.out",
                     args=("hf-to-mcore", "--hf-dir", str(tiny_root["vit300m_qwen2_hf"]), "--out-dir", str(mcore),
                           "--tp", "2", "--pp", "1", "--spec", "local"))
    log = log_of(slurm, f"convert-{job}.out")
    assert rc == 0 and f"{OK} {job}" in log, log[-3000:]
    assert (mcore / "latest_checkpointed_iteration.txt").is_file()
    samples = write_samples(root / "samples")
    recipe = root / "pack.yaml"
    recipe.write_text(yaml.safe_dump({"pack": {
        "tokenizer_dir": str(mcore / "hf_files"), "max_seq_len": 1536, "packs_per_shard": 2, "max_tiles": 1,
        "out": str(root / "packed"), "sources": [{"path": str(samples), "kind": "trajectories", "weight": 1.0}]}}))
    assert pack_main(["--config", str(recipe)]) == 0
    return {"mcore": mcore, "data": root / "packed", "root": root}


def train_overrides(inputs, run: Path, steps: int, **extra: str) -> str:
    run.mkdir(parents=True, exist_ok=True)
    values = {"model.mcore_dir": inputs["mcore"], "data.path": inputs["data"], "checkpoint.save_dir": run / "ckpt",
              "train.steps": steps, "train.max_seq_len": 1536, "checkpoint.export_hf": "null",
              "logging.metrics_file": run / "metrics.jsonl", "logging.tensorboard_dir": "null", **extra}
    return " ".join(f"{key}={value}" for key, value in values.items())


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def tracker(run: Path) -> str:
    return (run / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip()


def test_train_38b_runs_two_ranks_and_checkpoints(slurm, training_inputs):
    run = training_inputs["root"] / "run"
    rc, job = sbatch(slurm, "train_38b.sh", *CPU, "--ntasks-per-node=2", f"--output={slurm['logs']}/%x-%j.out",
                     CONFIG="configs/tiny.yaml", OVERRIDES=train_overrides(training_inputs, run, 4))
    log = log_of(slurm, f"sophia-train-38b-{job}.out")
    assert rc == 0 and f"{OK} {job}" in log, log[-4000:]
    assert "2 task(s)" in log and "restart 0" in log and "SOPHIA-LAUNCHER-REQUEUE" not in log
    assert tracker(run) == "4" and (run / "ckpt" / "iter_0000004").is_dir()
    rows = metrics(run)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert all(row["loss"] == row["loss"] and row["tokens"] > 0 for row in rows)  # finite, counted


def test_preemption_drill_checkpoints_requeues_and_finishes(slurm, training_inputs):
    """SIGUSR1 mid-run (what --signal=USR1@600 sends before the time limit): checkpoint, requeue, resume."""
    run, steps = training_inputs["root"] / "drill", 8
    env = job_env(slurm, CONFIG="configs/tiny.yaml", OVERRIDES=train_overrides(training_inputs, run, steps))
    cmd = ["sbatch", "--parsable", "--wait", *CPU, "--ntasks-per-node=2", "--job-name=drill",
           f"--output={slurm['logs']}/%x-%j.out", str(REPO / "launchers" / "train_38b.sh")]
    proc = subprocess.Popen(cmd, cwd=slurm["root"], env=env, stdout=subprocess.PIPE, text=True)
    job = proc.stdout.readline().split(";")[0].strip()
    assert job, "sbatch refused train_38b.sh"
    # The trainer installs its handler before the first step: wait for a logged step, then signal.
    deadline, first_step = time.monotonic() + 300, run / "metrics.jsonl"
    while not (first_step.is_file() and "\n" in first_step.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "no training step logged"
        time.sleep(0.2)
    signalled = subprocess.run(["scancel", "--signal=USR1", job], env=env, capture_output=True, text=True)
    assert signalled.returncode == 0, signalled.stderr
    rc = proc.wait(timeout=420)
    log = log_of(slurm, f"drill-{job}.out")
    assert rc == 0 and f"{OK} {job}" in log and f"SOPHIA-LAUNCHER-REQUEUE {job} (restart 0)" in log, log[-4000:]
    stopped = int(re.search(r"stopped early at step (\d+) of", log).group(1))
    assert 1 <= stopped < steps
    assert "restart 1" in log and f"resumed from {run / 'ckpt'} at step {stopped}" in log, log[-4000:]
    assert tracker(run) == str(steps)
    # Every step ran exactly once over the two runs.
    assert [row["step"] for row in metrics(run)] == list(range(1, steps + 1))


# ---------------------------------------------------------------- rollout array + merge


@pytest.fixture(scope="module")
def rollout_recipe(tiny_root, tmp_path_factory):
    from PIL import Image

    from rollout.sharding import shard_of

    root = tmp_path_factory.mktemp("launch_rollout")
    ids = [f"img{i}" for i in range(40)]
    # Four ids, two per shard of two, so both array tasks have work.
    chosen = [i for i in ids if shard_of(i, 2) == 0][:2] + [i for i in ids if shard_of(i, 2) == 1][:2]
    rows = []
    for n, item in enumerate(chosen):
        Image.new("RGB", (64 + 16 * n, 48), (40 * n, 200 - 40 * n, 90)).save(root / f"{item}.png")
        rows.append({"id": item, "image": str(root / f"{item}.png"), "question": f"How many shapes? ({n})",
                     "answer": str(n), "source": "synthetic"})
    (root / "inputs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    engine = {"engine": "transformers", "dtype": "float32", "max_tokens": 6}
    recipe = {"rollout": {"inputs": [str(root / "inputs.jsonl")], "store_dir": str(root / "store"),
                          "batch_size": 2, "N": 2, "verifier": {"timeout_s": 2.0, "workers": 1},
                          "captioner": {"model": str(tiny_root["vit300m_qwen2_hf"]), "K": 2, "max_tiles": 1,
                                        **engine},
                          "reasoner": {"easy": {"model": str(tiny_root["reasoner"]), **engine}}}}
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return {"recipe": root / "recipe.yaml", "store": root / "store", "ids": chosen, "K": 2, "N": 2}


def test_rollout_arrays_then_merge(slurm, rollout_recipe):
    """caption[0-1] (task 0 requeued mid-stage) -> reason[0-1] (same per-task stores) -> merge + select."""
    from rollout.stages import CAPTIONS, SCORES, TRAJECTORIES, read_rows
    from rollout.store import Store

    env = {"CONFIG": str(rollout_recipe["recipe"]), "OVERRIDES": ""}
    array_log = f"--output={slurm['logs']}/%x-%A_%a.out"
    _, caption = sbatch(slurm, "rollout_caption.sh", *CPU, "--array=0-1", array_log, wait=False, **env)
    # What `#SBATCH --signal=B:USR1@300` does before the time limit: the batch shell of task 0 gets
    # SIGUSR1 while its stage runs, requeues the task, and the rerun skips what the store holds.
    first = slurm["logs"] / f"sophia-caption-{caption}_0.out"
    deadline = time.monotonic() + 120
    while "stages caption" not in (first.read_text() if first.is_file() else ""):
        assert time.monotonic() < deadline, "caption task 0 did not start"
        time.sleep(0.2)
    signalled = subprocess.run(["scancel", "--batch", "--signal=USR1", f"{caption}_0"], env=job_env(slurm),
                               capture_output=True, text=True)
    assert signalled.returncode == 0, signalled.stderr
    _, reason = sbatch(slurm, "rollout_reason.sh", *CPU, "--array=0-1", array_log,
                       f"--dependency=afterok:{caption}", wait=False, **env)
    rc, merge = sbatch(slurm, "rollout_merge_pack.sh", *CPU, f"--dependency=afterok:{reason}",
                       f"--output={slurm['logs']}/%x-%j.out", STAGES="merge score select", **env)
    tasks = log_of(slurm, f"sophia-caption-{caption}_*.out")
    tasks += log_of(slurm, f"sophia-reason-{reason}_*.out") if rc == 0 else ""
    merged = log_of(slurm, f"sophia-merge-pack-{merge}.out") if rc == 0 else ""
    assert rc == 0 and f"{OK} {merge}" in merged, tasks[-4000:] + merged[-3000:]
    for job in (caption, reason):
        for index in range(2):
            assert f"{OK} {job}_{index}" in tasks and f"shard {index}/2" in tasks
    assert f"SOPHIA-LAUNCHER-REQUEUE {caption}_0 (restart 0)" in tasks and f"job {caption}_0" in tasks
    assert re.search(rf"job {caption}_0 'sophia-caption' restart 1", tasks), tasks[-4000:]
    assert sorted(path.name for path in Path(f"{rollout_recipe['store']}.tasks").iterdir()) == [
        "00000of00002", "00001of00002"]
    store, K, N = Store(rollout_recipe["store"]), rollout_recipe["K"], rollout_recipe["N"]
    captions = [(row["id"], row["k"]) for row in read_rows(store, CAPTIONS, ["id", "k"])]
    # Every input id captioned K times, each caption exactly once, none lost or doubled by the merge.
    assert sorted(captions) == sorted((item, k) for item in rollout_recipe["ids"] for k in range(K))
    for table in (TRAJECTORIES, SCORES):
        keys = [(row["id"], row["k"], row["n"]) for row in read_rows(store, table, ["id", "k", "n"])]
        assert sorted(keys) == sorted((item, k, n) for item, k in captions for n in range(N)), table
    # The unsharded select exported (tiny random models answer nothing right: no rows selected).
    assert (rollout_recipe["store"] / "selected.parquet").is_file()


# ---------------------------------------------------------------- served reasoners (launchers/serve.sh)


def test_pipeline_dry_run_serves_the_reasoners_on_their_own_nodes():
    """SERVE=1: a server job per reasoner (R1 over two nodes), the reason array on them, a teardown."""
    env = {**os.environ, "DRY": "1", "SERVE": "1", "PYTHON": sys.executable, "SHARDS": "4",
           "PIPELINE_STAGES": "caption reason merge-pack", "WORK": "runs/served",
           "ROLLOUT_OVERRIDES": "rollout.reasoner.hard.pp=2"}
    proc = subprocess.run([str(REPO / "launchers" / "pipeline.sh")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    names = [re.search(r"launchers/(\w+\.sh)|--wrap=(scancel)", line).group(0) for line in lines]
    assert names == ["launchers/rollout_caption.sh", "launchers/serve.sh", "launchers/serve.sh",
                     "launchers/rollout_reason.sh", "--wrap=scancel", "launchers/rollout_merge_pack.sh"]
    easy, hard, reason, teardown = lines[1:5]
    assert "ROLE=reasoner.easy" in easy and "--nodes=1 --gpus-per-node=4" in easy  # QwQ-32B: tp 4
    assert "ROLE=reasoner.hard" in hard and "--nodes=2 --gpus-per-node=8" in hard  # R1: tp 8 x pp 2
    assert "--dependency=afterok:ID_caption " in easy and "--dependency=afterok:ID_caption " in hard
    assert re.search(r"--dependency=afterok:ID_caption\\?,after:ID_serve-reasoner.easy:ID_serve-reasoner.hard ",
                     reason)
    for role in ("easy", "hard"):
        endpoint = f"runs/served/serve/reasoner.{role}.endpoint"
        assert f"ENDPOINT_FILE={endpoint}" in (easy if role == "easy" else hard)
        assert f"rollout.reasoner.{role}.engine=openai" in reason
        assert f"rollout.reasoner.{role}.endpoint_file={endpoint}" in reason
    assert "--gpus-per-node=0" in reason  # the reason tasks hold no GPUs while the servers do
    assert "--dependency=afterany:ID_reason " in teardown
    assert "scancel\\ ID_serve-reasoner.easy\\ ID_serve-reasoner.hard" in teardown


def test_serve_dry_run_multi_node_starts_ray_then_the_server_on_the_head():
    env = {**os.environ, "DRY": "1", "PYTHON": sys.executable, "CONFIG": "configs/internvl3_38b.yaml",
           "ROLE": "reasoner.hard", "PP": "2", "SERVE_HOSTS": "gpu-a gpu-b", "SLURM_JOB_ID": "4242",
           "ENDPOINT_FILE": "runs/x/hard.endpoint", "VLLM_CMD": "vllm serve"}
    proc = subprocess.run([str(REPO / "launchers" / "serve.sh")], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    head, worker, server, endpoint = proc.stdout.splitlines()
    assert head == "ray-head gpu-a: ray start --head --port=6621 --block"  # 6379 + 4242 % 1000
    assert worker == "ray-worker gpu-b: ray start --address=gpu-a:6621 --block"
    assert server.startswith("server gpu-a: vllm serve deepseek-ai/DeepSeek-R1 --host 0.0.0.0 --port 8242 ")
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 2" in server  # tp from the recipe, pp from PP
    assert "--max-model-len 40960" in server and "--distributed-executor-backend ray" in server
    assert endpoint == "endpoint http://gpu-a:8242 -> runs/x/hard.endpoint"
    single = subprocess.run([str(REPO / "launchers" / "serve.sh")], cwd=REPO, capture_output=True, text=True,
                            env={**env, "ROLE": "reasoner.easy", "PP": "", "SERVE_HOSTS": "gpu-a"}, timeout=60)
    assert single.returncode == 0 and single.stdout.startswith("server gpu-a: vllm serve Qwen/QwQ-32B ")
    assert "ray" not in single.stdout.split("endpoint")[0]


def test_served_reason_array_on_a_cpu_vllm_server_then_teardown(slurm, rollout_recipe, tiny_root):
    """serve.sh (vLLM on CPU, tiny reasoner) -> reason array with --dependency=after:<server> -> scancel."""
    pytest.importorskip("vllm")
    from rollout.stages import TRAJECTORIES, read_rows
    from rollout.store import Store

    root = rollout_recipe["recipe"].parent
    store, endpoint = root / "store-served", root / "serve" / "reasoner.endpoint"
    env = {"CONFIG": str(rollout_recipe["recipe"]), "STORE_LAYOUT": "shared", "STORE_DIR": str(store),
           "OVERRIDES": ""}
    rc, caption = sbatch(slurm, "rollout_caption.sh", *CPU, "--array=0-0", f"--output={slurm['logs']}/%x-%A_%a.out",
                         STAGES="caption", **env)
    assert rc == 0, log_of(slurm, f"sophia-caption-{caption}_*.out")[-3000:]
    _, server = sbatch(slurm, "serve.sh", *CPU, "--mem=4G", f"--output={slurm['logs']}/%x-%j.out", wait=False,
                       MODEL=str(tiny_root["reasoner"]), ENDPOINT_FILE=str(endpoint), VLLM_CPU_KVCACHE_SPACE="1",
                       VLLM_ARGS="--dtype bfloat16 --enforce-eager --max-model-len 2048")
    served = ("rollout.reasoner.easy.engine=openai rollout.reasoner.easy.max_tokens=16 "
              f"rollout.reasoner.easy.endpoint_file={endpoint} rollout.reasoner.easy.wait_for_server_s=900")
    try:
        rc, reason = sbatch(slurm, "rollout_reason.sh", *CPU, "--array=0-0", f"--dependency=after:{server}",
                            f"--output={slurm['logs']}/%x-%A_%a.out", timeout=1200, STAGES="reason",
                            **{**env, "OVERRIDES": served})
        serve_log = log_of(slurm, f"sophia-serve-{server}.out")
        reason_log = log_of(slurm, f"sophia-reason-{reason}_*.out")
        assert rc == 0 and f"{OK} {reason}_0" in reason_log, reason_log[-3000:] + serve_log[-3000:]
        assert "SOPHIA-SERVE-READY http://" in serve_log and endpoint.is_file()
    finally:
        subprocess.run(["scancel", server], env=job_env(slurm), capture_output=True)
    deadline = time.monotonic() + 120
    while endpoint.exists() or "server stopped" not in log_of(slurm, f"sophia-serve-{server}.out"):
        assert time.monotonic() < deadline, "the server job did not clean up after scancel"
        time.sleep(1)
    keys = {(row["id"], row["k"], row["n"]) for row in read_rows(Store(store), TRAJECTORIES, ["id", "k", "n"])}
    assert len(keys) == len(rollout_recipe["ids"]) * rollout_recipe["K"] * rollout_recipe["N"]
