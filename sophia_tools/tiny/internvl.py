"""Tiny InternVL checkpoints in both Hugging Face formats, for offline tests of every component.

Three shapes mirror the real families (DESIGN §3a) at toy width, keeping what matters to code that
loads, converts, shards or runs them: 448-pixel tiles of 14-pixel patches (1025 positions, 256 image
tokens per tile after pixel shuffle 0.5), the vision flavour (InternViT-300M: LayerNorm, qkv bias;
InternViT-6B: RMSNorm, full-width qk RMSNorm, a head count that does not divide 2), the projector,
and the language model (Qwen2 with q/k/v bias, or InternLM2 with packed ``wqkv``, GQA everywhere).

Weights are made once in transformers (``InternVLForConditionalGeneration``), every parameter random
and non-trivial (norm weights and layer scales too), seeded; then written

* ``fmt="hf"``: the transformers-native layout transformers itself saves (``vision_tower.*``,
  ``multi_modal_projector.*``, ``language_model.model.*``, ``language_model.lm_head.weight``);
* ``fmt="original"``: the remote-code ``InternVLChatModel`` layout and config, produced from the same
  tensors through :mod:`conversion.hf_formats` (so both formats hold bit-identical weights).

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


@dataclass(frozen=True)
class TinyShape:
    """One tiny InternVL family: vision tower, language model and tokenizer kind."""

    vision_hidden: int
    vision_heads: int
    vision_ffn: int
    vision_norm: str  # "layer_norm" (InternViT-300M) | "rms_norm" (InternViT-6B)
    vision_qkv_bias: bool
    vision_qk_norm: bool
    lm_arch: str  # "qwen2" | "internlm2"
    tokenizer: str  # "bpe" | "sentencepiece"
    vision_layers: int = 2
    lm_hidden: int = 64
    lm_heads: int = 4
    lm_kv_heads: int = 2
    lm_ffn: int = 160
    lm_layers: int = 4
    image_size: int = 448
    patch_size: int = 14


TINY_SHAPES: dict[str, TinyShape] = {
    "vit300m_qwen2": TinyShape(64, 4, 256, "layer_norm", True, False, "qwen2", "bpe"),
    "vit300m_internlm2": TinyShape(64, 4, 256, "layer_norm", True, False, "internlm2", "sentencepiece"),
    "vit6b_qwen2": TinyShape(80, 5, 320, "rms_norm", False, True, "qwen2", "bpe"),
}
FORMATS = ("hf", "original")
TORCH_DTYPES = ("float32", "bfloat16", "float16")


def _text_config(shape: TinyShape, tokenizer) -> dict:
    common = dict(vocab_size=tokenizer.vocab_size, hidden_size=shape.lm_hidden,
                  intermediate_size=shape.lm_ffn, num_hidden_layers=shape.lm_layers,
                  num_attention_heads=shape.lm_heads, num_key_value_heads=shape.lm_kv_heads,
                  hidden_act="silu", max_position_embeddings=32768, rope_theta=1e6,
                  rope_scaling={"rope_type": "dynamic", "factor": 2.0}, tie_word_embeddings=False,
                  bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
    if shape.lm_arch == "qwen2":  # InternVL3 / Qwen2.5
        return dict(common, model_type="qwen2", architectures=["Qwen2ForCausalLM"], rms_norm_eps=1e-6,
                    use_sliding_window=False, max_window_layers=shape.lm_layers)
    # InternVL2.5-8B / InternLM2.5, as transformers-native Llama
    return dict(common, model_type="llama", architectures=["LlamaForCausalLM"], rms_norm_eps=1e-5,
                attention_bias=False, mlp_bias=False, head_dim=shape.lm_hidden // shape.lm_heads)


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


def randomize_parameters_(model, seed: int) -> None:
    """Fill every parameter with seeded, non-trivial random values (in sorted-name order).

    Matrices get N(0, 1/fan_in); norm weights 1 + N(0, 0.1); layer scales 0.1 * (1 + N(0, 0.2));
    biases and embeddings of the vision tower N(0, 0.05) — never the ones/zeros of a fresh init.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            param = params[name]
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith(("lambda_1", "lambda_2", "ls1", "ls2")):
                value = 0.1 * (1 + 0.2 * noise)
            elif param.dim() == 1 and "norm" in name and name.endswith("weight"):
                value = 1 + 0.1 * noise
            elif param.dim() <= 1 or leaf in ("cls_token", "position_embeddings"):
                value = 0.05 * noise
            else:
                value = noise / (param[0].numel() ** 0.5)
            param.copy_(value.to(param.dtype))


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


def _write_internvl(tmp: Path, shape: TinyShape, fmt: str, seed: int, dtype: str,
                    tokenizer_dir: Path) -> None:
    from conversion.hf_formats import hf_config_to_original, hf_to_original

    tokenizer = load_tokenizer(tokenizer_dir)
    config, tensors = make_hf_weights(shape, tokenizer, seed, dtype)
    if fmt == "hf":
        config.save_pretrained(tmp)
        write_json(tmp / "preprocessor_config.json", preprocessor_config(shape))
    else:
        original = hf_config_to_original(config.to_dict())
        tensors = dict(hf_to_original(tensors.items(), original))
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

