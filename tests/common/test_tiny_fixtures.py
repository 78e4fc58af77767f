"""sophia_tools.tiny: the offline fixtures are complete, faithful to the real layouts, and load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conversion.hf_formats import iter_checkpoint_tensors, normalize_hf_name
from sophia_common.tokenizer import load_tokenizer
from sophia_tools.tiny.internvl import TINY_SHAPES, build_internvl

SHAPES = tuple(TINY_SHAPES)
EXPECTED_KEYS = {"tokenizer_bpe", "tokenizer_sentencepiece", "reasoner",
                 *(f"{shape}_{fmt}" for shape in SHAPES for fmt in ("hf", "original"))}


def test_build_all_keys(tiny_root):
    assert set(tiny_root) == EXPECTED_KEYS
    assert all(path.is_dir() for path in tiny_root.values())
    leftovers = [p.name for p in next(iter(tiny_root.values())).parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # temporary build dirs were renamed or removed


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt", ["hf", "original"])
def test_sharded_safetensors_with_index_and_tokenizer(tiny_root, shape, fmt):
    directory = tiny_root[f"{shape}_{fmt}"]
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2 and all((directory / shard).is_file() for shard in shards)
    tensors = dict(iter_checkpoint_tensors(directory))
    assert set(tensors) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    tokenizer = load_tokenizer(directory)
    embed_names = ("embed_tokens.weight", "tok_embeddings.weight")
    embed = next(t for name, t in tensors.items() if name.endswith(embed_names))
    assert embed.shape[0] == tokenizer.vocab_size and embed.shape[0] % 128 != 0
    assert all(t.dtype.is_floating_point and str(t.dtype) == "torch.float32" for t in tensors.values())


@pytest.mark.parametrize("shape", SHAPES)
def test_weights_are_random_and_non_trivial(tiny_root, shape):
    for name, tensor in iter_checkpoint_tensors(tiny_root[f"{shape}_hf"]):
        assert tensor.std() > 1e-3, name
        assert not (tensor == 1).any() and not (tensor == 0).any(), name


@pytest.mark.parametrize("shape", SHAPES)
def test_hf_dir_loads_bit_identically_in_transformers(tiny_root, shape):
    import torch
    from transformers import InternVLForConditionalGeneration

    directory = tiny_root[f"{shape}_hf"]
    model, info = InternVLForConditionalGeneration.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    loaded = {normalize_hf_name(k): v for k, v in model.state_dict().items()}
    on_disk = dict(iter_checkpoint_tensors(directory))
    assert set(loaded) == set(on_disk)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in on_disk.items())

    # one 448 tile -> 1025 positions -> 256 image tokens after pixel shuffle 0.5
    image_id = model.config.image_token_id
    assert image_id == load_tokenizer(directory).token_to_id("<IMG_CONTEXT>")
    ids = torch.cat([torch.tensor([[11, 12]]), torch.full((1, 256), image_id), torch.tensor([[13, 14]])], 1)
    with torch.no_grad():
        features = model.model.get_image_features(torch.randn(1, 3, 448, 448)).pooler_output
        logits = model(input_ids=ids, pixel_values=torch.randn(1, 3, 448, 448)).logits
    assert features.shape == (1, 256, TINY_SHAPES[shape].lm_hidden)
    assert logits.shape == (1, ids.shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_shape_details_match_the_real_families(tiny_root):
    from conversion.hf_formats import read_config

    orig = {shape: read_config(tiny_root[f"{shape}_original"]) for shape in SHAPES}
    hf = {shape: read_config(tiny_root[f"{shape}_hf"]) for shape in SHAPES}
    assert orig["vit300m_qwen2"]["llm_config"]["architectures"] == ["Qwen2ForCausalLM"]
    assert orig["vit300m_internlm2"]["llm_config"]["architectures"] == ["InternLM2ForCausalLM"]
    assert hf["vit300m_internlm2"]["text_config"]["model_type"] == "llama"
    six_b = orig["vit6b_qwen2"]["vision_config"]
    assert (six_b["hidden_size"], six_b["num_attention_heads"]) == (80, 5)
    assert six_b["norm_type"] == "rms_norm" and six_b["qk_normalization"] and not six_b["qkv_bias"]
    for config in orig.values():
        assert config["ps_version"] == "v2" and config["select_layer"] == -1
        assert config["downsample_ratio"] == 0.5
        assert config["force_image_size"] == 448 and config["vision_config"]["patch_size"] == 14
        assert config["template"] == "internvl2_5"
        assert config["dynamic_image_size"] and config["use_thumbnail"]
        assert config["max_dynamic_patch"] == 12 and config["min_dynamic_patch"] == 1
        assert config["llm_config"]["rope_theta"] == 1e6 and not config["tie_word_embeddings"]
    position = dict(iter_checkpoint_tensors(tiny_root["vit6b_qwen2_original"]))
    assert position["vision_model.embeddings.position_embedding"].shape == (1, 1025, 80)
    assert position["vision_model.encoder.layers.1.attn.q_norm.weight"].shape == (80,)


def test_build_is_idempotent_and_restamps(tiny_root, tmp_path):
    directory = tiny_root["vit300m_qwen2_hf"]
    mtime = (directory / "config.json").stat().st_mtime_ns
    tokenizer_dir = tiny_root["tokenizer_bpe"]
    assert build_internvl(directory, "vit300m_qwen2", "hf", tokenizer_dir=tokenizer_dir) == directory
    assert (directory / "config.json").stat().st_mtime_ns == mtime  # reused, not rebuilt

    other = build_internvl(tmp_path / "x", "vit300m_qwen2", "hf", seed=1, dtype="bfloat16",
                           tokenizer_dir=tokenizer_dir)
    first = dict(iter_checkpoint_tensors(other))
    assert str(next(iter(first.values())).dtype) == "torch.bfloat16"
    build_internvl(other, "vit300m_qwen2", "hf", seed=2, dtype="bfloat16", tokenizer_dir=tokenizer_dir)
    second = dict(iter_checkpoint_tensors(other))
    assert any(not (first[n] == second[n]).all() for n in first)  # another seed replaced the dir
    assert [p.name for p in tmp_path.iterdir()] == ["x"]


def test_build_rejects_unknown_shape(tmp_path):
    with pytest.raises(ValueError, match="vit300m_qwen2"):
        build_internvl(tmp_path / "x", "vit1b_llama")


def test_reasoner(tiny_root):
    import torch
    from transformers import AutoModelForCausalLM

    directory = tiny_root["reasoner"]
    config = json.loads((directory / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["hidden_size"] == 128
    assert config["hidden_size"] // config["num_attention_heads"] == 64 and config["num_key_value_heads"] == 1
    tokenizer = load_tokenizer(directory)
    generation = json.loads((directory / "generation_config.json").read_text())
    assert tokenizer.token_to_id("<|im_end|>") in generation["eos_token_id"]
    assert tokenizer.chat_template.startswith("{% for message in messages %}{{ '<|im_start|>'")
    model, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer.encode("How many circles?")])).logits
    assert logits.shape[-1] == tokenizer.vocab_size and torch.isfinite(logits).all()


def test_cli_prints_every_path(tiny_root, capsys):
    from sophia_tools.tiny.__main__ import main

    root = next(iter(tiny_root.values())).parent
    assert main(["--out", str(root)]) == 0
    printed = dict(line.split() for line in capsys.readouterr().out.splitlines())
    assert set(printed) == EXPECTED_KEYS | {"vllm_policy"} and printed["reasoner"] == str(tiny_root["reasoner"])
    assert (Path(printed["vllm_policy"]) / "config.json").is_file()  # the policy make demo captions with on vLLM


def test_imports_are_light():
    code = ("import sys, sophia_tools.tiny, sophia_tools.tiny.internvl, sophia_tools.tiny.reasoner, "
            "sophia_common.tokenizer, conversion.hf_formats; "
            "heavy = {'torch', 'transformers', 'tokenizers', 'sentencepiece', 'safetensors'} "
            "& set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_internlm2_wqkv_layout_row_by_row(tiny_root, tmp_path):
    # Bug caught: a wrong (h gs d) packing in the fixture writer or the converter (e.g. [q | k | v]
    # contiguous, or k and v swapped) would still round-trip; this checks every row by its index.
    import torch

    from conversion.convert import hf_to_mcore

    shape = TINY_SHAPES["vit300m_internlm2"]
    d = shape.lm_hidden // shape.lm_heads
    per_group = shape.lm_heads // shape.lm_kv_heads
    hf = dict(iter_checkpoint_tensors(tiny_root["vit300m_internlm2_hf"]))
    original = dict(iter_checkpoint_tensors(tiny_root["vit300m_internlm2_original"]))
    hf_to_mcore(tiny_root["vit300m_internlm2_original"], tmp_path / "mc", tp=1, pp=1)
    megatron = torch.load(tmp_path / "mc/iter_0000000/mp_rank_00/model_optim_rng.pt", weights_only=True)["model"]
    for layer in range(shape.lm_layers):
        q, k, v = (hf[f"language_model.model.layers.{layer}.self_attn.{x}_proj.weight"] for x in "qkv")
        wqkv = original[f"language_model.model.layers.{layer}.attention.wqkv.weight"]
        linear_qkv = megatron[f"language_model.decoder.layers.{layer}.self_attention.linear_qkv.weight"]
        assert wqkv.shape[0] == linear_qkv.shape[0] == (per_group + 2) * shape.lm_kv_heads * d
        for row in range(wqkv.shape[0]):
            group, slot, offset = row // ((per_group + 2) * d), row % ((per_group + 2) * d) // d, row % d
            expected = (q[(group * per_group + slot) * d + offset] if slot < per_group else
                        k[group * d + offset] if slot == per_group else v[group * d + offset])
            assert torch.equal(wqkv[row], expected), (layer, row)
            assert torch.equal(linear_qkv[row], expected), (layer, row)  # Megatron uses the same order
