"""What a first real user hits in ``sophia-convert`` (issues #16 and #12): each test names the bug it catches.

- mixed-dtype checkpoints: a bf16 tensor fused with fp32 partners must come back bf16;
- a converter killed with ``kill -9`` leaves ``OUT.tmp-<pid>``: the next run removes it and says so;
- a directory given to the wrong command, an output path that is (or is under) a file: one line each;
- tied embeddings are refused by name;
- ``--help`` documents every option with its meaning and default.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conversion.convert import hf_to_mcore
from conversion.export import mcore_to_hf
from tests.conversion.test_bad_input import assert_fails, convert
from tests.conversion.test_roundtrip import assert_same_tensors
from tests.multirank import REPO, subprocess_env


def recast(directory: Path, names_to_dtype: dict[str, torch.dtype]) -> None:
    """Rewrite the named tensors of a safetensors checkpoint in another dtype (same shard files)."""
    from safetensors.torch import load_file, save_file

    for shard in sorted(directory.glob("*.safetensors")):
        tensors = load_file(str(shard))
        hits = [n for n in tensors if n in names_to_dtype]
        if hits:
            tensors.update({n: tensors[n].to(names_to_dtype[n]) for n in hits})
            save_file(tensors, str(shard), metadata={"format": "pt"})


MIXED = {  # per fixture: one fused attention group and one gate/up pair with members of another dtype
    "vit300m_qwen2_hf": ("language_model.model.layers.0.self_attn.k_proj.weight",
                         "language_model.model.layers.3.mlp.up_proj.weight",
                         "vision_tower.encoder.layer.1.attention.v_proj.bias"),
    "vit300m_internlm2_original": ("language_model.model.layers.2.feed_forward.w1.weight",),
}


@pytest.mark.parametrize("key", sorted(MIXED))
def test_mixed_dtypes_come_back_bit_exact(tiny_root, tmp_path, key):
    # Bug caught: q/k/v and gate/up are concatenated into one Megatron tensor, which promotes the
    # bf16 member to fp32; without the recorded dtypes the export returns it as fp32.
    source = tmp_path / "src"
    shutil.copytree(tiny_root[key], source)
    recast(source, dict.fromkeys(MIXED[key], torch.bfloat16))
    hf_to_mcore(source, tmp_path / "mc", tp=2, pp=2)
    mcore_to_hf(tmp_path / "mc", tmp_path / "back")
    assert_same_tensors(source, tmp_path / "back")  # compares dtype and every bit


KILLED_CONVERTER = """
import sys, time
from conversion import torch_stream
for method in ("write", "write_ranges"):  # tensors from memory, and copied from the shards
    def write_then_hang(self, *args, _write=getattr(torch_stream.StreamingTorchWriter, method)):
        _write(self, *args)
        open(sys.argv[3], "w").close()
        time.sleep(600)
    setattr(torch_stream.StreamingTorchWriter, method, write_then_hang)
from conversion.convert import hf_to_mcore
hf_to_mcore(sys.argv[1], sys.argv[2], tp=1, pp=1)
"""


def test_kill_9_leftover_is_removed_and_named(tiny_root, tmp_path):
    # Bug caught: a converter killed mid-write leaves OUT.tmp-<pid> (tens of GB at 38B) that no run
    # ever removes or mentions. A live writer's temporary must survive.
    out, ready = tmp_path / "out", tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", KILLED_CONVERTER, str(tiny_root["vit300m_qwen2_hf"]),
                              str(out), str(ready)], cwd=REPO, env=subprocess_env())
    deadline = time.time() + 120
    while not ready.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ready.exists(), "the converter never started writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    leftover = tmp_path / f"out.tmp-{child.pid}"
    assert leftover.is_dir() and any(leftover.rglob("model_optim_rng.pt")) and not out.exists()
    live = tmp_path / f"out.tmp-{os.getpid()}"  # this test process is alive: not stale
    live.mkdir()
    proc = convert("hf-to-mcore", "--hf-dir", str(tiny_root["vit300m_qwen2_hf"]), "--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert not leftover.exists() and live.is_dir()
    assert str(leftover) in proc.stderr and "killed" in proc.stderr, proc.stderr
    assert (out / "latest_checkpointed_iteration.txt").is_file()


@pytest.fixture(scope="module")
def converted(tiny_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("converted") / "mc"
    hf_to_mcore(tiny_root["vit300m_qwen2_hf"], out, tp=1, pp=1)
    return out


def test_directory_given_to_the_wrong_command(tiny_root, converted, tmp_path):
    # Bug caught: both said "config.json: file not found" / "sophia_meta.json: file not found".
    proc = convert("hf-to-mcore", "--hf-dir", str(converted), "--out-dir", str(tmp_path / "o"))
    assert_fails(proc, str(converted), "Megatron checkpoint", "sophia-convert mcore-to-hf")
    hf = tiny_root["vit300m_qwen2_hf"]
    proc = convert("mcore-to-hf", "--mcore-dir", str(hf), "--out-dir", str(tmp_path / "o"))
    assert_fails(proc, str(hf), "Hugging Face", "sophia-convert hf-to-mcore")


@pytest.mark.parametrize("command", ("hf-to-mcore", "mcore-to-hf"))
def test_output_path_that_is_or_is_under_a_file(tiny_root, converted, tmp_path, command):
    # Bug caught: a file as --out-dir was "an existing directory"; a file as its parent gave a traceback.
    source = ["--hf-dir", str(tiny_root["vit300m_qwen2_hf"])] if command == "hf-to-mcore" \
        else ["--mcore-dir", str(converted)]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("precious")
    assert_fails(convert(command, *source, "--out-dir", str(a_file)), str(a_file), "is an existing file")
    assert_fails(convert(command, *source, "--out-dir", str(a_file), "--force"), "is an existing file")
    assert_fails(convert(command, *source, "--out-dir", str(a_file / "out")), f"{a_file} is a file")
    assert a_file.read_text() == "precious"


@pytest.mark.parametrize("key,section", (("vit300m_qwen2_hf", "text_config"),
                                         ("vit300m_internlm2_original", "llm_config"),
                                         ("vit6b_qwen2_hf", None)))
def test_tied_embeddings_refused(tiny_root, tmp_path, key, section):
    # Bug caught: a tied checkpoint converted, trained two diverging matrices and exported a model
    # that transformers re-ties on load.
    source = tmp_path / "src"
    shutil.copytree(tiny_root[key], source)
    config = json.loads((source / "config.json").read_text())
    (config[section] if section else config)["tie_word_embeddings"] = True
    (source / "config.json").write_text(json.dumps(config))
    proc = convert("hf-to-mcore", "--hf-dir", str(source), "--out-dir", str(tmp_path / "o"))
    assert_fails(proc, "tie_word_embeddings", "config.json")
    assert not (tmp_path / "o").exists()


def option_blocks(help_text: str) -> dict[str, str]:
    """``--option`` -> its help text, from argparse's ``options:`` section."""
    section = help_text.split("options:", 1)[1]
    blocks, current = {}, None
    for line in section.splitlines():
        match = re.match(r"\s{2}(-\w, )?(--[\w-]+)", line)
        if match:
            current = match.group(2)
            blocks[current] = line
        elif current:
            blocks[current] += " " + line.strip()
    return blocks


@pytest.mark.parametrize("command", ("hf-to-mcore", "mcore-to-hf", "verify"))
def test_help_gives_every_option_a_meaning_and_default(command):
    # Bug caught: options listed bare (--tp, --pp, --hf-dir ...) with no meaning or default.
    proc = convert(command, "--help")
    assert proc.returncode == 0, proc.stderr
    blocks = option_blocks(proc.stdout)
    assert "--out-dir" in blocks or command == "verify"
    for option, text in blocks.items():
        if option == "--help":
            continue
        meaning = re.sub(r"^\s*(-\w, )?--[\w-]+( [A-Z_{},.\d-]+)?", "", text).split("(default")[0]
        assert len(meaning.split()) >= 3, f"{command} {option}: no meaning in {text!r}"
        assert "default" in text or "required" in text, f"{command} {option}: no default in {text!r}"
