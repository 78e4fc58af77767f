"""Bad input: one clear line naming the file or tensor, exit 2, and no output that looks complete."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.multirank import REPO, subprocess_env


def convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sophia_tools.convert_cli", *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)


def hf_to_mcore(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return convert("hf-to-mcore", "--hf-dir", str(src), "--out-dir", str(out), *extra)


def assert_fails(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def copy_of(tiny_root, tmp_path):
    def make(key: str) -> Path:
        dest = tmp_path / key
        shutil.copytree(tiny_root[key], dest)
        return dest
    return make


def first_shard(directory: Path) -> Path:
    return sorted(directory.glob("*.safetensors"))[0]


def test_missing_shard(copy_of, tmp_path):
    src = copy_of("vit300m_qwen2_hf")
    shard = first_shard(src)
    shard.unlink()
    assert_fails(hf_to_mcore(src, tmp_path / "out"), str(shard), "missing")
    assert not (tmp_path / "out").exists()


def test_truncated_shard(copy_of, tmp_path):
    src = copy_of("vit300m_internlm2_original")
    shard = first_shard(src)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert_fails(hf_to_mcore(src, tmp_path / "out"), str(shard), "truncated")
    assert not (tmp_path / "out").exists()


def test_corrupt_header(copy_of, tmp_path):
    src = copy_of("vit6b_qwen2_hf")
    shard = first_shard(src)
    data = bytearray(shard.read_bytes())
    data[8:20] = b"not json!!!!"
    shard.write_bytes(bytes(data))
    assert_fails(hf_to_mcore(src, tmp_path / "out"), str(shard), "corrupt safetensors header")


def test_shape_disagrees_with_config(copy_of, tmp_path):
    src = copy_of("vit300m_qwen2_hf")
    config = json.loads((src / "config.json").read_text())
    config["text_config"]["intermediate_size"] += 8
    (src / "config.json").write_text(json.dumps(config))
    assert_fails(hf_to_mcore(src, tmp_path / "out"), "mlp.", "shape", "config.json implies")


def test_unknown_architecture(copy_of, tmp_path):
    src = copy_of("vit300m_qwen2_hf")
    config = json.loads((src / "config.json").read_text())
    config["text_config"]["model_type"] = "mamba"
    (src / "config.json").write_text(json.dumps(config))
    assert_fails(hf_to_mcore(src, tmp_path / "out"), str(src / "config.json"), "unknown or unsupported")


def test_tp_must_divide_heads_and_groups(tiny_root, tmp_path):
    assert_fails(hf_to_mcore(tiny_root["vit300m_qwen2_hf"], tmp_path / "o", "--tp", "8"), "4 attention heads")
    assert_fails(hf_to_mcore(tiny_root["vit300m_qwen2_hf"], tmp_path / "o", "--tp", "4"), "2 query groups")
    assert_fails(hf_to_mcore(tiny_root["vit300m_qwen2_hf"], tmp_path / "o", "--pp", "3"), "PP=3")


def test_existing_output_refused_unless_force(tiny_root, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_fails(hf_to_mcore(tiny_root["vit300m_qwen2_hf"], out), str(out), "already exists", "--force")
    assert (out / "keep.txt").read_text() == "precious"
    proc = hf_to_mcore(tiny_root["vit300m_qwen2_hf"], out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert not (out / "keep.txt").exists() and (out / "latest_checkpointed_iteration.txt").is_file()
    assert not list(tmp_path.glob("out.tmp-*")) and not list(tmp_path.glob("out.old-*"))


def test_inspect_both_kinds(tiny_root, tmp_path):
    proc = convert("inspect", str(tiny_root["vit6b_qwen2_original"]))
    assert proc.returncode == 0 and "vit6b_qwen2" in proc.stdout and "original" in proc.stdout
    assert hf_to_mcore(tiny_root["vit6b_qwen2_original"], tmp_path / "mc", "--tp", "2").returncode == 0
    proc = convert("inspect", str(tmp_path / "mc"))
    assert proc.returncode == 0 and "TP=2 PP=1" in proc.stdout, proc.stdout


def test_verify_refuses_a_training_save_dir(tiny_root, tmp_path):
    """A trainer's checkpoint.save_dir (old metadata without 'kind' included) is named, with what to do."""
    for name, meta in (("new", {"kind": "training", "mcore_dir": "/ckpt/converted", "step": 3, "tp": 1, "pp": 1,
                                "data": "/data"}),
                       ("old", {"mcore_dir": "/ckpt/converted", "step": 3, "tp": 1, "pp": 1, "data": "/data"})):
        save = tmp_path / name
        save.mkdir()
        (save / "sophia_meta.json").write_text(json.dumps(meta))
        proc = convert("verify", "--hf-dir", str(tiny_root["vit300m_qwen2_hf"]), "--mcore-dir", str(save))
        assert_fails(proc, "training run's checkpoint.save_dir", "sophia-convert mcore-to-hf", "/ckpt/converted")
        assert "Traceback" not in proc.stderr


def test_verify_refuses_a_mismatched_pair(tiny_root, tmp_path):
    mcore = tmp_path / "internlm2_mcore"
    assert hf_to_mcore(tiny_root["vit300m_internlm2_hf"], mcore).returncode == 0
    proc = convert("verify", "--hf-dir", str(tiny_root["vit300m_qwen2_hf"]), "--mcore-dir", str(mcore))
    assert_fails(proc, "are different models", "language.family", "hf-to-mcore")
    assert "Traceback" not in proc.stderr and "IMG_CONTEXT" not in proc.stderr
