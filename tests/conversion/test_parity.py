"""The Megatron model built from a converted checkpoint matches transformers' logits.

TP=2 x PP=2 (4 ranks, real Megatron, gloo) for the three shapes and both formats; original
checkpoints are compared through the transformers-native model they map to. One more case
loads a TP=2 x PP=2 checkpoint at TP=1 (re-cut on load) in a single process.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conversion.convert import hf_to_mcore
from tests.multirank import REPO, subprocess_env, torchrun_script

VERIFY = REPO / "sophia_megatron" / "verify.py"


def max_abs_diff(output: str) -> float:
    found = re.findall(r"max_abs_diff=([0-9.eE+-]+)", output)
    assert found, output[-2000:]
    return float(found[-1])


@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.parametrize("fmt", ("hf", "original"))
@pytest.mark.parametrize("shape", ("vit300m_qwen2", "vit300m_internlm2", "vit6b_qwen2"))
def test_parity_tp2_pp2(tiny_root, tmp_path, shape, fmt):
    source = tiny_root[f"{shape}_{fmt}"]
    hf_to_mcore(source, tmp_path / "mc", tp=2, pp=2)
    out = torchrun_script(VERIFY, 4, ["--hf-dir", str(source), "--mcore-dir", str(tmp_path / "mc"),
                                      "--tp", "2", "--pp", "2", "--tol", "1e-4"])
    assert max_abs_diff(out) <= 1e-4


def test_verify_cli_single_process_recut(tiny_root, tmp_path):
    source = tiny_root["vit300m_internlm2_original"]
    hf_to_mcore(source, tmp_path / "mc", tp=2, pp=2)
    proc = subprocess.run([sys.executable, "-m", "sophia_tools.convert_cli", "verify", "--hf-dir", str(source),
                           "--mcore-dir", str(tmp_path / "mc")], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert max_abs_diff(proc.stdout) <= 1e-4


def test_verify_fails_on_wrong_weights(tiny_root, tmp_path):
    # Convert one shape's weights, then compare against a *different* seed's fixture: must fail.
    from sophia_tools.tiny import build_internvl

    other = build_internvl(tmp_path / "other", "vit300m_qwen2", fmt="hf", seed=7)
    hf_to_mcore(tiny_root["vit300m_qwen2_hf"], tmp_path / "mc", tp=1, pp=1)
    proc = subprocess.run([sys.executable, "-m", "sophia_tools.convert_cli", "verify", "--hf-dir", str(other),
                           "--mcore-dir", str(tmp_path / "mc")], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and max_abs_diff(proc.stdout) > 1e-4
