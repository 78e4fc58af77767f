"""conversion.hf_formats: original <-> transformers-native InternVL, bit-exact, streamed, both layouts."""

from __future__ import annotations

import pytest

from conversion.hf_formats import (
    LayoutSpec,
    detect_family,
    detect_format,
    fuse_qkv,
    hf_config_to_original,
    hf_to_original,
    iter_checkpoint_tensors,
    normalize_hf_name,
    original_config_to_hf,
    original_to_hf,
    read_config,
    read_hf_config,
    split_qkv,
    to_prefixed_hf_name,
)
from sophia_tools.tiny.internvl import TINY_SHAPES

SHAPES = tuple(TINY_SHAPES)


def _load(tiny_root, shape, fmt):
    directory = tiny_root[f"{shape}_{fmt}"]
    return read_config(directory), dict(iter_checkpoint_tensors(directory))


def _assert_same_tensors(actual: dict, expected: dict) -> None:
    import torch

    assert set(actual) == set(expected)
    for name, tensor in expected.items():
        assert actual[name].dtype == tensor.dtype and torch.equal(actual[name], tensor), name


def design_original_keys(config: dict) -> set[str]:
    """The original-format key set as the hub checkpoints spell it, for this config."""
    vision, llm = config["vision_config"], config["llm_config"]
    keys = {"vision_model.embeddings.class_embedding", "vision_model.embeddings.position_embedding",
            "vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.patch_embedding.bias"}
    layer_norm = vision["norm_type"] == "layer_norm"
    for n in range(vision["num_hidden_layers"]):
        names = ["attn.qkv.weight", "attn.proj.weight", "attn.proj.bias", "ls1", "ls2", "norm1.weight",
                 "norm2.weight", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
        names += ["attn.qkv.bias"] if vision["qkv_bias"] else []
        names += ["attn.q_norm.weight", "attn.k_norm.weight"] if vision["qk_normalization"] else []
        names += ["norm1.bias", "norm2.bias"] if layer_norm else []
        keys |= {f"vision_model.encoder.layers.{n}.{name}" for name in names}
    keys |= {f"mlp1.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")}
    if llm["architectures"] == ["Qwen2ForCausalLM"]:
        per_layer = [f"self_attn.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")]
        per_layer += ["self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                      "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"]
        keys |= {"language_model.model.embed_tokens.weight", "language_model.model.norm.weight",
                 "language_model.lm_head.weight"}
    else:
        per_layer = ["attention.wqkv.weight", "attention.wo.weight", "feed_forward.w1.weight",
                     "feed_forward.w2.weight", "feed_forward.w3.weight", "attention_norm.weight",
                     "ffn_norm.weight"]
        keys |= {"language_model.model.tok_embeddings.weight", "language_model.model.norm.weight",
                 "language_model.output.weight"}
    layers = range(llm["num_hidden_layers"])
    keys |= {f"language_model.model.layers.{n}.{name}" for n in layers for name in per_layer}
    return keys


@pytest.mark.parametrize("shape", SHAPES)
def test_original_fixture_has_exactly_the_design_keys(tiny_root, shape):
    config, tensors = _load(tiny_root, shape, "original")
    assert set(tensors) == design_original_keys(config)


@pytest.mark.parametrize("shape", SHAPES)
def test_original_to_hf_to_original_is_bit_exact(tiny_root, shape):
    config, original = _load(tiny_root, shape, "original")
    _, hf = _load(tiny_root, shape, "hf")
    converted = dict(original_to_hf(original.items(), config))
    _assert_same_tensors(converted, hf)  # the two fixture dirs hold the same weights
    _assert_same_tensors(dict(hf_to_original(converted.items(), config)), original)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["legacy", "prefixed"])
def test_hf_to_original_to_hf_is_bit_exact(tiny_root, shape, layout):
    config, hf = _load(tiny_root, shape, "hf")
    _, original = _load(tiny_root, shape, "original")
    stream = hf.items() if layout == "legacy" else ((to_prefixed_hf_name(n), t) for n, t in hf.items())
    back = dict(hf_to_original(stream, config))
    _assert_same_tensors(back, original)
    again = dict(original_to_hf(back.items(), config, layout=layout))
    expected = hf if layout == "legacy" else {to_prefixed_hf_name(n): t for n, t in hf.items()}
    _assert_same_tensors(again, expected)


def test_prefixed_and_legacy_names_translate_both_ways():
    pairs = [("model.vision_tower.encoder.layer.0.lambda_1", "vision_tower.encoder.layer.0.lambda_1"),
             ("model.multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.weight"),
             ("model.language_model.layers.3.mlp.up_proj.weight",
              "language_model.model.layers.3.mlp.up_proj.weight"),
             ("lm_head.weight", "language_model.lm_head.weight")]
    for prefixed, legacy in pairs:
        assert normalize_hf_name(prefixed) == legacy and normalize_hf_name(legacy) == legacy
        assert to_prefixed_hf_name(legacy) == prefixed


def test_internlm2_wqkv_unpack_matches_q_k_v(tiny_root):
    """Row by row, against the packing InternLM2Attention reads: 'b q (h gs d) -> b q h gs d'."""
    import torch

    config, original = _load(tiny_root, "vit300m_internlm2", "original")
    _, hf = _load(tiny_root, "vit300m_internlm2", "hf")
    llm = config["llm_config"]
    heads, kv_heads = llm["num_attention_heads"], llm["num_key_value_heads"]
    head_dim, group = llm["hidden_size"] // heads, heads // kv_heads
    for n in range(llm["num_hidden_layers"]):
        wqkv = original[f"language_model.model.layers.{n}.attention.wqkv.weight"]
        proj = {p: hf[f"language_model.model.layers.{n}.self_attn.{p}_proj.weight"] for p in "qkv"}
        assert wqkv.shape == ((heads + 2 * kv_heads) * head_dim, llm["hidden_size"])
        blocks = wqkv.view(kv_heads, group + 2, head_dim, -1)  # rows grouped per KV head
        q_heads = proj["q"].view(heads, head_dim, -1)
        for h in range(kv_heads):
            block = blocks[h]
            for i in range(group):
                assert torch.equal(block[i], q_heads[h * group + i])
            assert torch.equal(block[group], proj["k"][h * head_dim:(h + 1) * head_dim])
            assert torch.equal(block[group + 1], proj["v"][h * head_dim:(h + 1) * head_dim])

    x = torch.randn(2, 5, llm["hidden_size"])
    packed = (x @ wqkv.T).view(2, 5, kv_heads, group + 2, head_dim)  # the remote code's attention input
    q_remote = packed[..., :group, :].reshape(2, 5, heads, head_dim)
    torch.testing.assert_close(q_remote, (x @ proj["q"].T).view(2, 5, heads, head_dim))
    torch.testing.assert_close(packed[..., -2, :], (x @ proj["k"].T).view(2, 5, kv_heads, head_dim))
    torch.testing.assert_close(packed[..., -1, :], (x @ proj["v"].T).view(2, 5, kv_heads, head_dim))


def test_qkv_split_and_fuse_are_inverse():
    import torch

    spec = LayoutSpec("internlm2", num_attention_heads=8, num_key_value_heads=2)
    for kind, rows in (("contiguous", 3 * 24), ("grouped", (8 + 2 * 2) * 4)):
        for fused in (torch.randn(rows, 24), torch.randn(rows)):  # weight and bias
            pieces = split_qkv(fused, kind, spec)
            assert torch.equal(fuse_qkv(*pieces, kind, spec), fused)
    q, k, v = split_qkv(torch.arange(72.0), "contiguous", spec)
    assert torch.equal(q, torch.arange(24.0)) and torch.equal(v, torch.arange(48.0, 72.0))


def test_unknown_and_incomplete_streams_raise(tiny_root):
    import torch

    config, hf = _load(tiny_root, "vit300m_qwen2", "hf")
    with pytest.raises(KeyError, match="vision_model.bogus"):
        list(original_to_hf([("vision_model.bogus", torch.zeros(1))], config))
    q_only = [(n, t) for n, t in hf.items() if n.endswith("attention.q_proj.weight")]
    with pytest.raises(ValueError, match="incomplete"):
        list(hf_to_original(q_only, config))


@pytest.mark.parametrize("shape", SHAPES)
def test_detect_format_and_family(tiny_root, shape):
    original, hf = (read_config(tiny_root[f"{shape}_{fmt}"]) for fmt in ("original", "hf"))
    assert (detect_format(original), detect_format(hf)) == ("original", "hf")
    assert detect_family(original) == detect_family(hf) == shape


def test_detect_format_rejects_other_configs():
    with pytest.raises(ValueError, match="not an InternVL config"):
        detect_format({"model_type": "llama"})


@pytest.mark.parametrize("shape", SHAPES)
def test_config_translation_round_trips(tiny_root, shape):
    from transformers import InternVLConfig

    original, hf = (read_config(tiny_root[f"{shape}_{fmt}"]) for fmt in ("original", "hf"))
    image_token_id = hf["image_token_id"]
    assert hf_config_to_original(original_config_to_hf(original, image_token_id)) == original
    translated = InternVLConfig(**original_config_to_hf(hf_config_to_original(hf), image_token_id)).to_dict()
    reference = InternVLConfig(**hf).to_dict()
    for config in (translated, reference):
        config.pop("transformers_version", None)
    assert translated == reference


@pytest.mark.parametrize("shape", SHAPES)
def test_read_hf_config_takes_the_image_token_from_the_dir(tiny_root, shape):
    hf = read_config(tiny_root[f"{shape}_hf"])
    from_original = read_hf_config(tiny_root[f"{shape}_original"])
    assert from_original["image_token_id"] == hf["image_token_id"] != original_config_to_hf(
        read_config(tiny_root[f"{shape}_original"]))["image_token_id"]
    assert read_hf_config(tiny_root[f"{shape}_hf"]) == hf


def test_v1_pixel_shuffle_is_refused(tiny_root):
    original = dict(read_config(tiny_root["vit300m_qwen2_original"]), ps_version="v1")
    with pytest.raises(ValueError, match="v2"):
        original_config_to_hf(original)


@pytest.mark.parametrize("shape", ["vit300m_internlm2", "vit6b_qwen2"])
def test_original_dir_runs_in_transformers_like_the_hf_dir(tiny_root, shape):
    """Config and weights translated from the original dir give the hf dir's logits exactly."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    config, original = _load(tiny_root, shape, "original")
    hf_config = original_config_to_hf(config, read_config(tiny_root[f"{shape}_hf"])["image_token_id"])
    model = InternVLForConditionalGeneration(InternVLConfig(**hf_config)).eval()
    model.load_state_dict(dict(original_to_hf(original.items(), config, layout="prefixed")), strict=True)
    reference = InternVLForConditionalGeneration.from_pretrained(tiny_root[f"{shape}_hf"]).eval()
    image_id = hf_config["image_token_id"]
    ids = torch.cat([torch.tensor([[3, 4]]), torch.full((1, 256), image_id), torch.tensor([[5, 6]])], 1)
    pixels = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids, pixel_values=pixels).logits,
                           reference(input_ids=ids, pixel_values=pixels).logits)
