"""The trainer refuses bad input clearly: one line from rank 0, a hint, a non-zero exit.

Wrong tokenizer, wrong length, missing directories, a world size the layout cannot use,
non-finite losses, a reused checkpoint directory of another run, an existing export directory.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from sophia_common.contract import read_manifest, write_manifest
from tests.multirank import REPO, free_port, subprocess_env

CLI = REPO / "sophia_tools" / "train_cli.py"


def write_recipe(tmp, training, data, *, mcore=None, **sections):
    recipe = tmp / "recipe.yaml"
    base = {"model": {"mcore_dir": str(mcore or training["mcore"])}, "data": {"path": str(data)},
            "parallel": {"tp": 1, "pp": 1},
            "train": {"steps": 4, "packs_per_step": 1, "max_seq_len": 1536},
            "logging": {"metrics_file": str(tmp / "metrics.jsonl")}}
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    recipe.write_text(yaml.safe_dump(base))
    return recipe


def run_trainer(tmp, training, data, *args, nproc=1, **train):
    """The trainer under torchrun (the way SLURM/torchrun users run it)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
           str(CLI), "--config", str(write_recipe(tmp, training, data, train=train)), *args]
    return subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def run_sophia_train(*args):
    """``sophia-train`` as a user types it (it starts its own ranks)."""
    return subprocess.run([sys.executable, "-m", "sophia_tools.train_cli", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_refuses_other_tokenizer(tiny_training, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_training["data"], data)
    manifest = read_manifest(data)
    manifest.tokenizer_fingerprint = "0" * 64
    write_manifest(data, manifest)
    recipe = write_recipe(tmp_path, tiny_training, data)
    proc = run_sophia_train("--config", str(recipe), "--nproc-per-node", "2")
    assert proc.returncode == 2, proc.stderr[-3000:]
    # one line, from rank 0 only, naming the dataset and saying what to do; no traceback, no banner
    assert len(error_lines(proc.stderr)) == 1, proc.stderr[-3000:]
    assert "tokenizer fingerprint" in proc.stderr and str(data) in proc.stderr and "re-pack" in proc.stderr
    assert "Traceback" not in proc.stderr and "=====" not in proc.stderr, proc.stderr[-3000:]


def test_missing_directories_and_a_bad_world_size_say_what_to_do(tiny_training, tmp_path):
    missing = tmp_path / "nowhere"
    proc = run_sophia_train("--config", str(write_recipe(tmp_path, tiny_training, missing)))
    assert proc.returncode == 2 and error_lines(proc.stderr) == [
        f"error: data.path {missing}: directory does not exist (build a packed dataset with sophia-rollout pack, "
        "or fix data.path)"], proc.stderr[-2000:]
    recipe = write_recipe(tmp_path, tiny_training, tiny_training["data"], parallel={"tp": 2, "pp": 1})
    proc = run_sophia_train("--config", str(recipe), "--nproc-per-node", "3")
    assert proc.returncode == 2 and len(error_lines(proc.stderr)) == 1, proc.stderr[-2000:]
    assert "sophia-train --nproc-per-node 2" in proc.stderr and "parallel.tp=1" in proc.stderr
    # under torchrun, ranks that cannot tile TP x PP: one line from rank 0 (torchrun adds its own report)
    proc = run_trainer(tmp_path, tiny_training, tiny_training["data"], "parallel.pp=2", nproc=1)
    assert proc.returncode != 0 and len(error_lines(proc.stderr)) == 1, proc.stderr[-2000:]
    assert "--nproc-per-node 2" in proc.stderr and "parallel.pp=1" in proc.stderr


def test_refuses_longer_packs_than_the_model(tiny_training, tmp_path):
    proc = run_trainer(tmp_path, tiny_training, tiny_training["data"], max_seq_len=512)
    assert proc.returncode != 0 and "max sequence length is 512" in proc.stderr


def test_nonfinite_losses_are_skipped_then_abort(tiny_training, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_training["data"], data)
    for shard in data.glob("packs-*.parquet"):
        table = pq.read_table(shard)
        weights = [[float("nan")] * len(w) for w in table.column("sample_weights").to_pylist()]
        index = table.schema.get_field_index("sample_weights")
        table = table.set_column(index, table.schema.field(index), pa.array(weights, pa.list_(pa.float32())))
        pq.write_table(table, shard)
    proc = run_trainer(tmp_path, tiny_training, data, max_nonfinite_in_row=2)
    assert proc.returncode != 0
    assert "non-finite loss, update skipped (1 in a row)" in proc.stderr
    assert "2 consecutive non-finite losses" in proc.stderr


def test_resume_refuses_a_save_dir_of_another_run(tiny_training, tmp_path):
    save = tmp_path / "ckpt"
    first = write_recipe(tmp_path, tiny_training, tiny_training["data"], train={"steps": 1},
                         checkpoint={"save_dir": str(save)})
    proc = run_sophia_train("--config", str(first))
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved_meta = (save / "sophia_meta.json").read_text()
    other_model = tmp_path / "other_mcore"
    shutil.copytree(tiny_training["mcore"], other_model)
    second = write_recipe(tmp_path, tiny_training, tiny_training["data"], mcore=other_model, train={"steps": 2},
                          checkpoint={"save_dir": str(save)})
    proc = run_sophia_train("--config", str(second))
    assert proc.returncode == 2 and len(error_lines(proc.stderr)) == 1, proc.stderr[-3000:]
    assert "checkpoint.save_dir holds another run" in proc.stderr and f"now '{other_model}'" in proc.stderr
    assert "--no-resume" in proc.stderr
    assert (save / "sophia_meta.json").read_text() == saved_meta  # nothing rewritten
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "1"


def test_export_refuses_an_existing_directory_unless_forced(tiny_training, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    recipe = write_recipe(tmp_path, tiny_training, tiny_training["data"], train={"steps": 1})
    proc = run_sophia_train("--config", str(recipe), "--export-hf", str(out))
    assert proc.returncode == 2 and error_lines(proc.stderr) == [
        f"error: {out}: output directory already exists (use --force to replace it)"], proc.stderr[-3000:]
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before training, not after
    assert (out / "keep.txt").read_text() == "mine"
    proc = run_sophia_train("--config", str(recipe), "--export-hf", str(out), "--force")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "config.json").is_file() and not (out / "keep.txt").exists()
