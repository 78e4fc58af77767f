"""Packed attention with the local layer spec keeps samples apart under the GPU configuration.

Megatron-Core's ``FusedScaleMaskSoftmax`` serves ``attn_mask_type=causal`` with a kernel that
never reads the mask; the worker builds the model with the config a GPU run uses and lets
Megatron's own code choose the softmax path (the CUDA kernels are mocks that compute what each
kernel computes, see the worker).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.multirank import REPO, subprocess_env

WORKER = Path(__file__).parent / "workers" / "fused_softmax_mask.py"


def test_local_spec_fused_softmax_reads_the_block_mask(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(WORKER), "--out", str(out)], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    # the configuration a GPU run builds: bf16 with the fused masked softmax
    assert report["bf16"] and report["masked_softmax_fusion"] and report["layers"] == 4
    assert report["mask_types"] == ["arbitrary"]
    # Megatron takes the fused path, and the kernel it picks is the one that applies our mask
    assert report["fused_path_taken"] and report["kernels"] == ["ScaledMaskedSoftmax"], report
    assert report["cross_sample_probability"] == 0.0, report
    # the second sample of a pack sees only itself (bf16 rounding aside)
    assert report["second_sample_logits_max_abs_diff"] <= 0.02 * report["logits_scale"] + 1e-3, report
