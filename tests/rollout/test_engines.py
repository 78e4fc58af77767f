"""Generation engines: the Transformers engine captions with a tiny InternVL; misconfiguration fails clearly;
(slow) the vLLM engine samples n completions per prompt from the tiny reasoner, in a subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from rollout.engine_api import (
    FINISH_LENGTH,
    FINISH_STOP,
    UNREADABLE_IMAGE,
    EngineConfig,
    Failure,
    Request,
    SamplingParams,
    request_seed,
)
from rollout.engines import make_engine
from sophia_common.cli import UserError
from sophia_common.config import ConfigError, build
from tests.multirank import REPO, subprocess_env

CAPTION = ({"role": "user", "content": "Describe the image in detail."},)


def png_bytes(size=(300, 200), colour=(220, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def captioner(tiny_root):
    config = EngineConfig(model=str(tiny_root["vit300m_qwen2_hf"]), engine="transformers", dtype="float32",
                          max_tokens=12, seed=0)
    with make_engine(config, "captioner", vision=True, max_tiles=2) as engine:
        yield engine, config


def test_transformers_engine_captions_k_per_image(captioner, tmp_path):
    engine, config = captioner
    (tmp_path / "wide.png").write_bytes(png_bytes((600, 200), (0, 90, 200)))
    requests = [Request(CAPTION, key="one", image=png_bytes()), Request(CAPTION, key="two", image=tmp_path / "wide.png"),
                Request(CAPTION, key="bad", image=b"not an image")]
    results = engine.generate(requests, SamplingParams.of(config, n=3))
    assert len(results) == 3
    for completions in results[:2]:
        assert len(completions) == 3
        for completion in completions:
            assert 1 <= completion.num_tokens <= 12
            assert completion.finish_reason in (FINISH_STOP, FINISH_LENGTH)
            assert completion.finish_reason == FINISH_STOP or completion.num_tokens == 12
            assert isinstance(completion.text, str)
        assert len({completion.text for completion in completions}) > 1  # n independent samples
    assert isinstance(results[2], Failure) and results[2].reason == UNREADABLE_IMAGE


def test_sampling_is_reproducible_per_request_key(captioner):
    engine, config = captioner
    params = SamplingParams.of(config, n=2)
    first = engine.generate([Request(CAPTION, key="same", image=png_bytes())], params)[0]
    again = engine.generate([Request(CAPTION, key="other", image=png_bytes()),
                             Request(CAPTION, key="same", image=png_bytes())], params)
    assert again[1] == first and again[0] != first
    assert request_seed(0, "k") == request_seed(0, "k") != request_seed(1, "k")
    assert request_seed(None, "k") is None


def test_transformers_text_engine(tiny_root):
    config = EngineConfig(model=str(tiny_root["reasoner"]), engine="transformers", dtype="float32", max_tokens=8)
    with make_engine(config, "reasoner.easy", vision=False) as engine:
        results = engine.generate([Request(({"role": "user", "content": "Is 7 > 5?"},), key="q")],
                                  SamplingParams.of(config, n=2))
        assert [len(results[0])] == [2] and all(c.num_tokens <= 8 for c in results[0])
        with pytest.raises(UserError, match="text-only engine got an image"):
            engine.generate([Request(CAPTION, key="q", image=png_bytes())], SamplingParams.of(config, n=1))


def test_misconfigured_engines_fail_clearly(tiny_root, tmp_path):
    with pytest.raises(UserError, match="rollout.captioner.model is not set"):
        make_engine(EngineConfig(engine="transformers"), "captioner", vision=True)
    with pytest.raises(UserError, match="is not a checkpoint directory"):
        make_engine(EngineConfig(model=str(tmp_path / "nowhere"), engine="transformers"), "captioner", vision=True)
    original = EngineConfig(model=str(tiny_root["vit300m_qwen2_original"]), engine="transformers")
    with pytest.raises(UserError, match="transformers-native InternVL"):
        make_engine(original, "captioner", vision=True)
    with pytest.raises(ConfigError, match="'rollout.captioner.engine': 'tgi' is not one of"):
        build(EngineConfig, {"engine": "tgi", "model": "x"}, "rollout.captioner")
    with pytest.raises(ConfigError, match="top_p"):
        build(EngineConfig, {"top_p": 0}, "rollout.captioner")
    with pytest.raises(ValueError, match="greedy"):
        SamplingParams(n=2, temperature=0)


def test_vllm_captioning_without_torchvision_is_refused(tiny_root, monkeypatch):
    pytest.importorskip("vllm")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # what a host without (a usable) torchvision sees
    config = EngineConfig(model=str(tiny_root["vit300m_qwen2_hf"]), engine="vllm")
    with pytest.raises(UserError, match="needs torchvision.*torchvision_shim --install.*engine: transformers"):
        make_engine(config, "captioner", vision=True)


@pytest.mark.slow
def test_vllm_engine_samples_n_per_prompt(tiny_root):
    pytest.importorskip("vllm")
    worker = REPO / "tests" / "rollout" / "workers" / "vllm_engine.py"
    proc = subprocess.run([sys.executable, str(worker), str(tiny_root["reasoner"])], cwd=REPO, capture_output=True,
                          text=True, timeout=420, env=subprocess_env(VLLM_CPU_KVCACHE_SPACE="1"))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    first, second, too_long, first_again, other_key = json.loads(lines[-1][len("RESULT "):])
    for completions in (first, second, other_key):
        assert len(completions) == 3
        for text, num_tokens, finish_reason in completions:
            assert isinstance(text, str)
            assert 1 <= num_tokens <= 16 and finish_reason in (FINISH_STOP, FINISH_LENGTH)
            assert finish_reason == FINISH_STOP or num_tokens == 16
    assert too_long["failure"][0] == "prompt_too_long"
    assert first_again == first and other_key != first  # seeded per request key


# ---------------------------------------------------------------- torchvision on a CPU-only torch

_DROP_HOOK = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
              "if type(f).__name__ != '_TorchvisionHook']; ")


def test_torchvision_imports_in_every_fresh_interpreter_through_the_startup_hook():
    """The .pth start-up hook (written by the Makefile's install) makes the CUDA-built torchvision import on
    the CPU-only torch in any new interpreter (vLLM's workers are new interpreters), transformers with it."""
    import torch

    from sophia_common import torchvision_shim

    if not torchvision_shim.cpu_only_torch():
        pytest.skip("a CUDA/ROCm torch loads torchvision's own ops; the hook stays idle")
    assert torchvision_shim.pth_path().is_file(), "run `make install` (python -m sophia_common.torchvision_shim --install)"
    code = ("import torch, torchvision, transformers; from torchvision.transforms import functional; "
            "print(torchvision.__version__, torch.ops.torchvision.nms.default._schema)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torchvision::nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor" in proc.stdout
    without = subprocess.run([sys.executable, "-c", _DROP_HOOK + "import torchvision"], capture_output=True,
                             text=True, env=subprocess_env())
    assert without.returncode != 0 and "torchvision::nms" in without.stderr  # the hook is what makes it work
    assert torch.version.cuda is None


def test_torchvision_hook_never_acts_on_a_cuda_torch(monkeypatch):
    import torch

    from sophia_common import torchvision_shim

    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torchvision_shim, "_library", None)
    assert not torchvision_shim.cpu_only_torch() and torchvision_shim.declare_schemas() is False


def test_cpu_kv_cache_default_is_modest_and_respects_the_user(monkeypatch):
    from rollout.engines import default_cpu_kv_cache_gib, set_default_cpu_kv_cache

    gib = 1 << 30
    assert [default_cpu_kv_cache_gib(n * gib) for n in (4, 24, 64, 512)] == [1, 2, 6, 8]
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    set_default_cpu_kv_cache("test")
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == "3"
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE")
    set_default_cpu_kv_cache("test")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert os.environ["VLLM_CPU_KVCACHE_SPACE"] == str(default_cpu_kv_cache_gib(total))
