"""The trainer refuses bad input clearly: wrong tokenizer, wrong length, non-finite losses."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from sophia_common.contract import read_manifest, write_manifest
from tests.multirank import REPO, free_port, subprocess_env


def run_trainer(tmp, training, data, **train):
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"mcore_dir": str(training["mcore"])}, "data": {"path": str(data)},
        "parallel": {"tp": 1, "pp": 1},
        "train": {"steps": 4, "packs_per_step": 1, "max_seq_len": 1536, **train},
        "logging": {"metrics_file": str(tmp / "metrics.jsonl")}}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=1", f"--master-port={free_port()}",
           str(REPO / "sophia_megatron" / "cli.py"), "--config", str(recipe)]
    return subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def test_refuses_other_tokenizer(tiny_training, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_training["data"], data)
    manifest = read_manifest(data)
    manifest.tokenizer_fingerprint = "0" * 64
    write_manifest(data, manifest)
    proc = run_trainer(tmp_path, tiny_training, data)
    assert proc.returncode != 0
    assert "tokenizer fingerprint" in proc.stderr and str(data) in proc.stderr


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
