"""Tiny InternVL checkpoints in both Hugging Face formats, for offline tests of every component.

Three shapes mirror the real families (docs/ALGORITHM.md §3) at toy width, keeping what matters to code that
loads, converts, shards or runs them: 448-pixel tiles of 14-pixel patches (1025 positions, 256 image
tokens per tile after pixel shuffle 0.5), the vision flavour (InternViT-300M: LayerNorm, qkv bias;
InternViT-6B: RMSNorm, full-width qk RMSNorm, a head count that does not divide 2), the projector,
and the language model (Qwen2 with q/k/v bias, or InternLM2 with packed ``wqkv``, GQA everywhere).

Weights are made once in transformers (``InternVLForConditionalGeneration``), every parameter random
and non-trivial (norm weights and layer scales too), seeded; then written

* ``fmt="hf"``: the transformers-native layout transformers itself saves (``vision_tower.*``,
  ``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.weight``);
* ``fmt="original"``: the remote-code ``InternVLChatModel`` layout, produced from the same tensors by a
  hand-written table of the hub's names and a head-by-head ``wqkv`` packing that do not use the
  converter (so round trips and format parity compare the converter with an independent source);
  the config comes from ``conversion.hf_formats.hf_config_to_original``.

Both are safetensors sharded in two with ``model.safetensors.index.json``, with the tokenizer copied
in. ``python -m sophia_tools.tiny --out DIR`` builds everything (see :func:`build_all`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from sophia_common.tokenizer import fingerprint_dir, load_tokenizer
from sophia_tools.tiny import build_atomically, write_json
from sophia_tools.tiny.tokenizer import build_tokenizer, copy_tokenizer_files
from sophia_tools.tiny.weights import randomize_parameters_


@dataclass(frozen=True)
class TinyShape:
    """One tiny InternVL family: vision tower and language-model family (its row gives the tokenizer kind)."""

    vision_hidden: int
    vision_heads: int
    vision_ffn: int
    vision_norm: str  # "layer_norm" (InternViT-300M) | "rms_norm" (InternViT-6B)
    vision_qkv_bias: bool
    vision_qk_norm: bool
    lm_arch: str  # a conversion.families row: "qwen2" | "internlm2"
    vision_layers: int = 2
    lm_hidden: int = 64
    lm_heads: int = 4
    lm_kv_heads: int = 2
    lm_ffn: int = 160
    lm_layers: int = 4
    image_size: int = 448
    patch_size: int = 14

    @property
    def tokenizer(self) -> str:
        """"bpe" | "sentencepiece", as the family's real tokenizer."""
        from conversion.families import by_name

        return by_name(self.lm_arch).tokenizer


TINY_SHAPES: dict[str, TinyShape] = {
    "vit300m_qwen2": TinyShape(64, 4, 256, "layer_norm", True, False, "qwen2"),
    "vit300m_internlm2": TinyShape(64, 4, 256, "layer_norm", True, False, "internlm2"),
    "vit6b_qwen2": TinyShape(80, 5, 320, "rms_norm", False, True, "qwen2"),
}
FORMATS = ("hf", "original")
TORCH_DTYPES = ("float32", "bfloat16", "float16")


def _text_config(shape: TinyShape, tokenizer) -> dict:
    from conversion.families import by_name

    family = by_name(shape.lm_arch)
    config = dict(vocab_size=tokenizer.vocab_size, hidden_size=shape.lm_hidden,
                  intermediate_size=shape.lm_ffn, num_hidden_layers=shape.lm_layers,
                  num_attention_heads=shape.lm_heads, num_key_value_heads=shape.lm_kv_heads,
                  hidden_act="silu", max_position_embeddings=32768, rope_theta=1e6,
                  rope_scaling={"rope_type": "dynamic", "factor": 2.0}, tie_word_embeddings=False,
                  bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
                  model_type=family.hf_text_model_type, architectures=[family.hf_text_architecture],
                  rms_norm_eps=family.default_norm_eps)
    if "max_window_layers" in family.text_only_keys:  # Qwen2.5: sliding window off
        config.update(use_sliding_window=False, max_window_layers=shape.lm_layers)
    if family.original_bias_key:  # InternLM2.5 as transformers-native Llama: no bias, head size spelled out
        config.update(attention_bias=False, mlp_bias=False, head_dim=shape.lm_hidden // shape.lm_heads)
    return config


def hf_config(shape: TinyShape, tokenizer) -> dict:
    """The ``InternVLConfig`` dict of ``shape`` for a loaded ``sophia_common.tokenizer`` tokenizer."""
    vision = dict(hidden_size=shape.vision_hidden, num_attention_heads=shape.vision_heads,
                  intermediate_size=shape.vision_ffn, num_hidden_layers=shape.vision_layers,
                  norm_type=shape.vision_norm, attention_bias=shape.vision_qkv_bias,
                  use_qk_norm=shape.vision_qk_norm, hidden_act="gelu", layer_norm_eps=1e-6,
                  image_size=[shape.image_size] * 2, patch_size=[shape.patch_size] * 2,
                  layer_scale_init_value=0.1, use_mean_pooling=True)
    image_token_id = tokenizer.token_to_id("<IMG_CONTEXT>")
    return dict(vision_config=vision, text_config=_text_config(shape, tokenizer),
                image_token_id=image_token_id, image_seq_length=256, downsample_ratio=0.5,
                projector_hidden_act="gelu", vision_feature_layer=-1,
                vision_feature_select_strategy="default", tie_word_embeddings=False)


def make_hf_weights(shape: TinyShape, tokenizer, seed: int = 0, dtype: str = "float32"):
    """(``InternVLConfig``, legacy-layout ``{name: tensor}``) of a random transformers InternVL."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    from conversion.hf_formats import normalize_hf_name

    config = InternVLConfig(**hf_config(shape, tokenizer))
    model = InternVLForConditionalGeneration(config)
    randomize_parameters_(model, seed)
    model.to(getattr(torch, dtype))
    config.dtype = dtype
    config.architectures = ["InternVLForConditionalGeneration"]
    tensors = {normalize_hf_name(name): tensor.detach() for name, tensor in model.state_dict().items()}
    return config, tensors


def preprocessor_config(shape: TinyShape) -> dict:
    """``preprocessor_config.json`` of the transformers-native format (GotOcr2 tiling, ImageNet stats)."""
    return {"crop_to_patches": True, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
            "do_resize": True, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
            "image_processor_type": "GotOcr2ImageProcessor", "max_patches": 12, "min_patches": 1,
            "processor_class": "InternVLProcessor", "resample": 3, "rescale_factor": 1 / 255,
            "size": {"height": shape.image_size, "width": shape.image_size}}


def generation_config(tokenizer) -> dict:
    eos = sorted({tokenizer.end_of_turn_id, tokenizer.eos_id})
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": eos, "pad_token_id": tokenizer.pad_id}


def save_sharded_safetensors(tensors: dict, directory: str | Path, num_shards: int = 2) -> None:
    """Write ``tensors`` as ``model-0000i-of-0000n.safetensors`` shards plus ``model.safetensors.index.json``.

    Tensors keep their order and are cut into ``num_shards`` runs of about equal bytes.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    names = list(tensors)
    sizes = [tensors[n].numel() * tensors[n].element_size() for n in names]
    total = sum(sizes)
    shards: list[list[str]] = [[] for _ in range(max(1, min(num_shards, len(names))))]
    running = 0
    for name, size in zip(names, sizes, strict=True):
        shards[min(len(shards) - 1, running * len(shards) // max(total, 1))].append(name)
        running += size
    shards = [s for s in shards if s]
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        filename = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        shard_tensors = {n: tensors[n].contiguous() for n in shard}
        save_file(shard_tensors, str(directory / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, filename))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    index_path = directory / "model.safetensors.index.json"
    index_path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


# The hub's original (remote-code InternVLChatModel) tensor names, written out by hand from
# OpenGVLab's checkpoints: deliberately NOT derived from conversion.hf_formats, so that the
# original-format fixtures are an independent witness for the converter, not its own inverse.
# Keys: transformers-native (legacy layout) names, "{i}" a layer index.
_VISION_ORIGINAL = {
    "vision_tower.embeddings.cls_token": "vision_model.embeddings.class_embedding",
    "vision_tower.embeddings.position_embeddings": "vision_model.embeddings.position_embedding",
    "vision_tower.embeddings.patch_embeddings.projection.weight": "vision_model.embeddings.patch_embedding.weight",
    "vision_tower.embeddings.patch_embeddings.projection.bias": "vision_model.embeddings.patch_embedding.bias",
    "vision_tower.encoder.layer.{i}.attention.projection_layer.weight": "vision_model.encoder.layers.{i}.attn.proj.weight",
    "vision_tower.encoder.layer.{i}.attention.projection_layer.bias": "vision_model.encoder.layers.{i}.attn.proj.bias",
    "vision_tower.encoder.layer.{i}.attention.q_norm.weight": "vision_model.encoder.layers.{i}.attn.q_norm.weight",
    "vision_tower.encoder.layer.{i}.attention.k_norm.weight": "vision_model.encoder.layers.{i}.attn.k_norm.weight",
    "vision_tower.encoder.layer.{i}.lambda_1": "vision_model.encoder.layers.{i}.ls1",
    "vision_tower.encoder.layer.{i}.lambda_2": "vision_model.encoder.layers.{i}.ls2",
    "vision_tower.encoder.layer.{i}.layernorm_before.weight": "vision_model.encoder.layers.{i}.norm1.weight",
    "vision_tower.encoder.layer.{i}.layernorm_before.bias": "vision_model.encoder.layers.{i}.norm1.bias",
    "vision_tower.encoder.layer.{i}.layernorm_after.weight": "vision_model.encoder.layers.{i}.norm2.weight",
    "vision_tower.encoder.layer.{i}.layernorm_after.bias": "vision_model.encoder.layers.{i}.norm2.bias",
    "vision_tower.encoder.layer.{i}.mlp.fc1.weight": "vision_model.encoder.layers.{i}.mlp.fc1.weight",
    "vision_tower.encoder.layer.{i}.mlp.fc1.bias": "vision_model.encoder.layers.{i}.mlp.fc1.bias",
    "vision_tower.encoder.layer.{i}.mlp.fc2.weight": "vision_model.encoder.layers.{i}.mlp.fc2.weight",
    "vision_tower.encoder.layer.{i}.mlp.fc2.bias": "vision_model.encoder.layers.{i}.mlp.fc2.bias",
    "multi_modal_projector.layer_norm.weight": "mlp1.0.weight",
    "multi_modal_projector.layer_norm.bias": "mlp1.0.bias",
    "multi_modal_projector.linear_1.weight": "mlp1.1.weight",
    "multi_modal_projector.linear_1.bias": "mlp1.1.bias",
    "multi_modal_projector.linear_2.weight": "mlp1.3.weight",
    "multi_modal_projector.linear_2.bias": "mlp1.3.bias",
}
_L, _OL = "language_model.model.layers.{i}.", "language_model.model.layers.{i}."
_LM_ORIGINAL = {
    "qwen2": {  # the remote code holds transformers' own Qwen2ForCausalLM: names unchanged
        "language_model.model.embed_tokens.weight": "language_model.model.embed_tokens.weight",
        "language_model.model.norm.weight": "language_model.model.norm.weight",
        "language_model.lm_head.weight": "language_model.lm_head.weight",
        **{_L + n: _OL + n for n in (
            "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
            "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "self_attn.o_proj.weight",
            "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
            "input_layernorm.weight", "post_attention_layernorm.weight")},
    },
    "internlm2": {  # InternLM2ForCausalLM (remote code); q/k/v are fused into attention.wqkv
        "language_model.model.embed_tokens.weight": "language_model.model.tok_embeddings.weight",
        "language_model.model.norm.weight": "language_model.model.norm.weight",
        "language_model.lm_head.weight": "language_model.output.weight",
        _L + "self_attn.o_proj.weight": _OL + "attention.wo.weight",
        _L + "mlp.gate_proj.weight": _OL + "feed_forward.w1.weight",
        _L + "mlp.up_proj.weight": _OL + "feed_forward.w3.weight",
        _L + "mlp.down_proj.weight": _OL + "feed_forward.w2.weight",
        _L + "input_layernorm.weight": _OL + "attention_norm.weight",
        _L + "post_attention_layernorm.weight": _OL + "ffn_norm.weight",
    },
}


def internlm2_wqkv(q, k, v, kv_heads: int, head_dim: int):
    """InternLM2's packed ``wqkv`` rows, built head by head: per KV group g, its q heads, k_g, v_g."""
    import torch

    per_group = q.shape[0] // head_dim // kv_heads
    rows = []
    for g in range(kv_heads):
        for j in range(per_group):
            head = g * per_group + j
            rows.append(q[head * head_dim:(head + 1) * head_dim])
        rows.append(k[g * head_dim:(g + 1) * head_dim])
        rows.append(v[g * head_dim:(g + 1) * head_dim])
    return torch.cat(rows, dim=0)


def original_tensors(tensors: dict, shape: TinyShape) -> dict:
    """The original-format ``{name: tensor}`` of transformers-native legacy ``tensors``, by the table above."""
    import torch

    table = {}
    for template, original in {**_VISION_ORIGINAL, **_LM_ORIGINAL[shape.lm_arch]}.items():
        for i in range(max(shape.vision_layers, shape.lm_layers)):
            table[template.format(i=i)] = original.format(i=i)
    out = {}
    for i in range(shape.vision_layers):
        hf = f"vision_tower.encoder.layer.{i}.attention."
        for kind in ("weight", "bias"):
            if f"{hf}q_proj.{kind}" in tensors:  # [q | k | v] rows
                out[f"vision_model.encoder.layers.{i}.attn.qkv.{kind}"] = torch.cat(
                    [tensors.pop(f"{hf}{x}_proj.{kind}") for x in "qkv"])
    if shape.lm_arch == "internlm2":
        head_dim = shape.lm_hidden // shape.lm_heads
        for i in range(shape.lm_layers):
            q, k, v = (tensors.pop(f"language_model.model.layers.{i}.self_attn.{x}_proj.weight") for x in "qkv")
            out[f"language_model.model.layers.{i}.attention.wqkv.weight"] = internlm2_wqkv(
                q, k, v, shape.lm_kv_heads, head_dim)
    unknown = sorted(set(tensors) - set(table))
    if unknown:
        raise KeyError(f"no original name for {unknown[:3]}")
    out.update({table[name]: tensor for name, tensor in tensors.items()})
    return out


def _write_internvl(tmp: Path, shape: TinyShape, fmt: str, seed: int, dtype: str,
                    tokenizer_dir: Path) -> None:
    from conversion.hf_formats import hf_config_to_original

    tokenizer = load_tokenizer(tokenizer_dir)
    config, tensors = make_hf_weights(shape, tokenizer, seed, dtype)
    if fmt == "hf":
        config.save_pretrained(tmp)
        write_json(tmp / "preprocessor_config.json", preprocessor_config(shape))
    else:
        original = hf_config_to_original(config.to_dict())
        tensors = original_tensors(dict(tensors), shape)
        write_json(tmp / "config.json", original)
    write_json(tmp / "generation_config.json", generation_config(tokenizer))
    save_sharded_safetensors(tensors, tmp, num_shards=2)
    copy_tokenizer_files(tokenizer_dir, tmp)


def build_internvl(out: str | Path, shape: str, fmt: str = "hf", seed: int = 0, dtype: str = "float32",
                   tokenizer_dir: str | Path | None = None) -> Path:
    """Build the tiny InternVL ``shape`` in format ``fmt`` ("hf" | "original") into ``out``; reuse if built.

    ``tokenizer_dir`` is a tokenizer from :func:`build_tokenizer` of the shape's kind; without it one
    is trained into a temporary dir.
    """
    if shape not in TINY_SHAPES:
        raise ValueError(f"unknown tiny shape {shape!r}; expected one of {sorted(TINY_SHAPES)}")
    if fmt not in FORMATS or dtype not in TORCH_DTYPES:
        raise ValueError(f"fmt must be in {FORMATS} and dtype in {TORCH_DTYPES}; got {fmt!r}, {dtype!r}")
    spec = TINY_SHAPES[shape]
    stamp = {"shape": shape, "fmt": fmt, "seed": seed, "dtype": dtype, "spec": asdict(spec)}
    with tempfile.TemporaryDirectory() as scratch:
        if tokenizer_dir is None:
            tokenizer_dir = build_tokenizer(Path(scratch) / "tokenizer", spec.tokenizer)
        stamp["tokenizer"] = fingerprint_dir(tokenizer_dir)
        return build_atomically(out, stamp, lambda tmp: _write_internvl(tmp, spec, fmt, seed, dtype,
                                                                         Path(tokenizer_dir)))


def build_all(root: str | Path, seed: int = 0) -> dict[str, Path]:
    """Build every tiny fixture under ``root``; returns their dirs by key.

    Keys: ``tokenizer_bpe``, ``tokenizer_sentencepiece``, ``<shape>_<fmt>`` for each shape of
    :data:`TINY_SHAPES` and fmt in ("hf", "original"), and ``reasoner``.
    """
    from sophia_tools.tiny.reasoner import build_reasoner

    root = Path(root)
    paths = {f"tokenizer_{kind}": build_tokenizer(root / f"tokenizer_{kind}", kind)
             for kind in ("bpe", "sentencepiece")}
    for shape, spec in TINY_SHAPES.items():
        for fmt in FORMATS:
            paths[f"{shape}_{fmt}"] = build_internvl(root / f"{shape}_{fmt}", shape, fmt, seed=seed,
                                                     tokenizer_dir=paths[f"tokenizer_{spec.tokenizer}"])
    paths["reasoner"] = build_reasoner(root / "reasoner", seed=seed)
    return paths

