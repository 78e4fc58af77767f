"""InternVL's two Hugging Face formats, and the declarative mapping between them.

* **original** — OpenGVLab's remote-code checkpoints (``InternVLChatModel``: ``vision_model.*``,
  ``mlp1.*``, ``language_model.*`` holding a Qwen2 or InternLM2 causal LM).
* **hf** — transformers-native checkpoints (``InternVLForConditionalGeneration``, the ``-hf`` repos).
  transformers saves them in the *legacy* layout (``vision_tower.*``, ``multi_modal_projector.*``,
  ``language_model.model.*``, ``language_model.lm_head.weight``) and also loads the layout of its
  own module names (``model.vision_tower.*``, ``model.language_model.*``, ``lm_head.weight``);
  both are accepted here, and the legacy one is written. An InternLM2 backbone becomes Llama.

The tables below are the mapping, as literal data (``*`` stands for one dotted name component, such
as a layer index or ``weight``/``bias``); one function applies them to a stream of ``(name, tensor)``
pairs, so a converter can stream shard by shard. Two mappings are not 1:1: the vision ``attn.qkv``
(rows ``[q | k | v]``) and InternLM2's ``attention.wqkv`` (rows packed per KV group: the group's q
heads, then its k head, then its v head — ``(h gs d)``), both split into ``q_proj/k_proj/v_proj``.
Configs translate both ways too (``original_config_to_hf`` / ``hf_config_to_original``).

Importing this module is light (torch is only imported inside the functions that need it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from conversion.families import (
    SHARED_TEXT_KEYS,
    FusedQKV,
    by_hf_text_model_type,
    by_name,
    by_original_architecture,
)

if TYPE_CHECKING:
    import torch

NamedTensors = Iterable[tuple[str, "torch.Tensor"]]

# fmt: off
# Each table row is (original remote-code name, transformers-native name in the legacy layout);
# "*" stands for one dotted name component. Per-layer rows are relative to the *_LAYER prefixes.
VISION_LAYER = ("vision_model.encoder.layers.*.",  "vision_tower.encoder.layer.*.")
LM_LAYER     = ("language_model.model.layers.*.",  "language_model.model.layers.*.")

VISION_RENAMES: tuple[tuple[str, str], ...] = (
    ("vision_model.embeddings.class_embedding",    "vision_tower.embeddings.cls_token"),
    ("vision_model.embeddings.position_embedding", "vision_tower.embeddings.position_embeddings"),
    ("vision_model.embeddings.patch_embedding.*",  "vision_tower.embeddings.patch_embeddings.projection.*"),
)
VISION_LAYER_RENAMES: tuple[tuple[str, str], ...] = (
    ("attn.q_norm.*",                              "attention.q_norm.*"),
    ("attn.k_norm.*",                              "attention.k_norm.*"),
    ("attn.proj.*",                                "attention.projection_layer.*"),
    ("ls1",                                        "lambda_1"),
    ("ls2",                                        "lambda_2"),
    ("norm1.*",                                    "layernorm_before.*"),
    ("norm2.*",                                    "layernorm_after.*"),
    ("mlp.fc1.*",                                  "mlp.fc1.*"),
    ("mlp.fc2.*",                                  "mlp.fc2.*"),
)
PROJECTOR_RENAMES: tuple[tuple[str, str], ...] = (
    ("mlp1.0.*",                                   "multi_modal_projector.layer_norm.*"),
    ("mlp1.1.*",                                   "multi_modal_projector.linear_1.*"),
    ("mlp1.3.*",                                   "multi_modal_projector.linear_2.*"),
)
# Not 1:1: one original tensor <-> (q, k, v) transformers tensors, split along dim 0. The
# language model's own (InternLM2's wqkv) is in its family row (conversion.families).
VISION_QKV = FusedQKV("attn.qkv.*", ("attention.q_proj.*", "attention.k_proj.*", "attention.v_proj.*"),
                      "contiguous")

# transformers' module names (the "prefixed" layout) -> the legacy layout it saves.
HF_PREFIXED_TO_LEGACY: tuple[tuple[str, str], ...] = (
    ("model.vision_tower.",                        "vision_tower."),
    ("model.multi_modal_projector.",               "multi_modal_projector."),
    ("model.language_model.",                      "language_model.model."),
    ("lm_head.",                                   "language_model.lm_head."),
)
# fmt: on

SUPPORTED_FAMILIES = ("vit300m_qwen2", "vit300m_internlm2", "vit6b_qwen2")


# names and layouts


@dataclass(frozen=True)
class LayoutSpec:
    """What the tensor mapping needs to know about a model: LM architecture and attention heads."""

    lm_arch: str  # a language-model family name (conversion.families): "qwen2", "internlm2"
    num_attention_heads: int
    num_key_value_heads: int


def _compile(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\*", r"([^.]+)") + "$")


def _fill(template: str, groups: tuple[str, ...]) -> str:
    parts = template.split("*")
    if len(parts) - 1 != len(groups):
        raise ValueError(f"pattern {template!r} needs {len(parts) - 1} wildcards, got {groups}")
    return parts[0] + "".join(g + p for g, p in zip(groups, parts[1:], strict=True))


def _per_layer(prefixes: tuple[str, str], rows) -> tuple[tuple[str, str], ...]:
    return tuple((prefixes[0] + original, prefixes[1] + hf) for original, hf in rows)


def _rename_tables(lm_arch: str) -> tuple[tuple[str, str], ...]:
    """Every 1:1 row for a model whose language model is of family ``lm_arch``, with full names."""
    family = by_name(lm_arch)
    return (VISION_RENAMES + _per_layer(VISION_LAYER, VISION_LAYER_RENAMES) + PROJECTOR_RENAMES
            + family.names + _per_layer(LM_LAYER, family.layer_names))


def _fused_tables(lm_arch: str) -> tuple[tuple[str, tuple[str, ...], str], ...]:
    """Every fused row, as (full original name, full transformers names, packing)."""
    family = by_name(lm_arch)
    rows = [(VISION_LAYER, VISION_QKV)] + ([(LM_LAYER, family.fused_qkv)] if family.fused_qkv else [])
    return tuple((prefix[0] + fused.original, tuple(prefix[1] + name for name in fused.hf), fused.packing)
                 for prefix, fused in rows)


def normalize_hf_name(name: str) -> str:
    """Map a transformers-native name in either layout (legacy or ``model.``-prefixed) to the legacy one."""
    for prefixed, legacy in HF_PREFIXED_TO_LEGACY:
        if name.startswith(prefixed):
            return legacy + name[len(prefixed):]
    return name


def to_prefixed_hf_name(name: str) -> str:
    """Map a legacy-layout transformers name to transformers' module name (``model.``-prefixed)."""
    for prefixed, legacy in HF_PREFIXED_TO_LEGACY:
        if name.startswith(legacy):
            return prefixed + name[len(legacy):]
    raise KeyError(f"not a transformers-native InternVL tensor name: {name!r}")


# the two non-1:1 transforms


def split_qkv(fused: torch.Tensor, kind: str, spec: LayoutSpec) -> tuple[torch.Tensor, ...]:
    """Split a fused qkv weight or bias into (q, k, v) along dim 0.

    ``contiguous``: rows ``[q | k | v]`` of equal size (InternViT). ``grouped``: InternLM2's ``(h gs d)``
    packing, per KV group ``h`` its ``gs - 2`` q heads, then one k head, then one v head.
    """
    if kind == "contiguous":
        return tuple(t.contiguous() for t in fused.chunk(3, dim=0))
    kv_heads = spec.num_key_value_heads
    group = spec.num_attention_heads // kv_heads
    rest = fused.shape[1:]
    packed = fused.reshape(kv_heads, group + 2, -1, *rest)
    q = packed[:, :group].reshape(-1, *rest).contiguous()
    k = packed[:, group].reshape(-1, *rest).contiguous()
    v = packed[:, group + 1].reshape(-1, *rest).contiguous()
    return q, k, v


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kind: str, spec: LayoutSpec) -> torch.Tensor:
    """The inverse of :func:`split_qkv`."""
    import torch

    if kind == "contiguous":
        return torch.cat([q, k, v], dim=0)
    kv_heads = spec.num_key_value_heads
    group = spec.num_attention_heads // kv_heads
    rest = q.shape[1:]
    head_dim = k.shape[0] // kv_heads
    packed = torch.cat([q.reshape(kv_heads, group, head_dim, *rest), k.reshape(kv_heads, 1, head_dim, *rest),
                        v.reshape(kv_heads, 1, head_dim, *rest)], dim=1)
    return packed.reshape(-1, *rest).contiguous()


# streams of (name, tensor)


def original_to_hf(named_tensors: NamedTensors, config: Mapping, layout: str = "legacy") -> Iterator:
    """Yield the transformers-native ``(name, tensor)`` pairs of an original-format stream.

    ``config`` is the checkpoint's config.json (either format); ``layout`` is ``"legacy"`` (what
    transformers saves) or ``"prefixed"`` (transformers' module names).
    """
    if layout not in ("legacy", "prefixed"):
        raise ValueError(f"layout must be 'legacy' or 'prefixed', got {layout!r}")
    spec = layout_spec(config)
    renames = [(_compile(src), dst) for src, dst in _rename_tables(spec.lm_arch)]
    fused = [(_compile(src), dsts, kind) for src, dsts, kind in _fused_tables(spec.lm_arch)]
    out_name = to_prefixed_hf_name if layout == "prefixed" else (lambda n: n)
    for name, tensor in named_tensors:
        for pattern, targets, kind in fused:
            if match := pattern.match(name):
                for target, piece in zip(targets, split_qkv(tensor, kind, spec), strict=True):
                    yield out_name(_fill(target, match.groups())), piece
                break
        else:
            yield out_name(_apply_renames(name, renames)), tensor


def hf_to_original(named_tensors: NamedTensors, config: Mapping) -> Iterator:
    """Yield the original-format ``(name, tensor)`` pairs of a transformers-native stream (either layout).

    q/k/v pieces are held until all three of one fused tensor have arrived, then fused and yielded.
    """
    spec = layout_spec(config)
    renames = [(_compile(dst), src) for src, dst in _rename_tables(spec.lm_arch)]
    pieces = [(_compile(dst), src, index, kind) for src, dsts, kind in _fused_tables(spec.lm_arch)
              for index, dst in enumerate(dsts)]
    pending: dict[str, dict[int, torch.Tensor]] = {}
    for raw_name, tensor in named_tensors:
        name = normalize_hf_name(raw_name)
        for pattern, target, index, kind in pieces:
            if match := pattern.match(name):
                fused_name = _fill(target, match.groups())
                parts = pending.setdefault(fused_name, {})
                parts[index] = tensor
                if len(parts) == 3:
                    del pending[fused_name]
                    yield fused_name, fuse_qkv(parts[0], parts[1], parts[2], kind, spec)
                break
        else:
            yield _apply_renames(name, renames), tensor
    if pending:
        raise ValueError(f"incomplete q/k/v sets at end of stream: {sorted(pending)}")


def _apply_renames(name: str, renames: list[tuple[re.Pattern, str]]) -> str:
    for pattern, target in renames:
        if match := pattern.match(name):
            return _fill(target, match.groups())
    raise KeyError(f"no InternVL mapping for tensor {name!r}")


# configs


def detect_format(config: Mapping) -> str:
    """``"original"`` for an ``InternVLChatModel`` config.json, ``"hf"`` for an ``InternVLConfig`` one."""
    architectures = config.get("architectures") or []
    if "llm_config" in config or "InternVLChatModel" in architectures \
            or config.get("model_type") == "internvl_chat":
        return "original"
    if "text_config" in config or config.get("model_type") == "internvl":
        return "hf"
    raise ValueError(f"not an InternVL config (model_type={config.get('model_type')!r}, "
                     f"architectures={architectures})")


def _lm_arch(config: Mapping) -> str:
    """The language-model family name of a config.json of either format."""
    if detect_format(config) == "original":
        return by_original_architecture((config["llm_config"].get("architectures") or [""])[0]).name
    return by_hf_text_model_type(config["text_config"].get("model_type", "qwen2")).name


def _lm_config(config: Mapping) -> Mapping:
    return config["llm_config"] if detect_format(config) == "original" else config["text_config"]


def layout_spec(config: Mapping) -> LayoutSpec:
    """The :class:`LayoutSpec` of a config.json of either format."""
    lm = _lm_config(config)
    heads = lm["num_attention_heads"]
    return LayoutSpec(_lm_arch(config), heads, lm.get("num_key_value_heads") or heads)


def detect_family(config: Mapping) -> str:
    """``"<vision>_<lm>"``: vision ``vit300m`` (LayerNorm, no qk-norm) or ``vit6b`` (RMSNorm, qk-norm),
    LM ``qwen2`` or ``internlm2`` (Llama in the transformers-native format). The families this
    project targets are :data:`SUPPORTED_FAMILIES`; the mapping itself works for any pair."""
    vision = config["vision_config"]
    if detect_format(config) == "original":
        rms, qk_norm = vision.get("norm_type", "rms_norm") == "rms_norm", vision.get("qk_normalization", True)
    else:
        rms, qk_norm = vision.get("norm_type", "layer_norm") == "rms_norm", vision.get("use_qk_norm", False)
    if rms and qk_norm:
        flavour = "vit6b"
    elif not rms and not qk_norm:
        flavour = "vit300m"
    else:
        raise ValueError(f"unknown InternViT flavour: rms_norm={rms}, qk_norm={qk_norm}")
    return f"{flavour}_{_lm_arch(config)}"


# original InternVisionConfig key -> InternVLVisionConfig key
VISION_CONFIG_KEYS = (
    ("hidden_size", "hidden_size"), ("intermediate_size", "intermediate_size"),
    ("num_attention_heads", "num_attention_heads"), ("num_hidden_layers", "num_hidden_layers"),
    ("hidden_act", "hidden_act"), ("layer_norm_eps", "layer_norm_eps"), ("norm_type", "norm_type"),
    ("qkv_bias", "attention_bias"), ("qk_normalization", "use_qk_norm"), ("num_channels", "num_channels"),
    ("attention_dropout", "attention_dropout"), ("dropout", "projection_dropout"),
    ("initializer_factor", "layer_scale_init_value"), ("initializer_range", "initializer_range"),
)
# Fields of an original config.json that the transformers-native config has no place for.
ORIGINAL_DEFAULTS = {"template": "internvl2_5", "ps_version": "v2", "dynamic_image_size": True,
                     "use_thumbnail": True, "min_dynamic_patch": 1, "max_dynamic_patch": 12,
                     "pad2square": False, "use_backbone_lora": 0, "use_llm_lora": 0}
ORIGINAL_AUTO_MAP = {"AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
                     "AutoModel": "modeling_internvl_chat.InternVLChatModel",
                     "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel"}
INTERN_VIT_AUTO_MAP = {"AutoConfig": "configuration_intern_vit.InternVisionConfig",
                       "AutoModel": "modeling_intern_vit.InternVisionModel"}

def _hf_rope(text: Mapping) -> tuple[float, dict | None]:
    """(rope_theta, scaling or None) from a text config in the transformers 4 or 5 spelling."""
    params = dict(text.get("rope_parameters") or {})
    theta = params.pop("rope_theta", text.get("rope_theta", 10000.0))
    scaling = text.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind == "default":
        return theta, None
    return theta, {"type": kind, "factor": scaling["factor"]}


def original_config_to_hf(original: Mapping, image_token_id: int | None = None) -> dict:
    """Translate an original ``InternVLChatModel`` config.json to an ``InternVLConfig`` dict.

    ``image_token_id`` is the tokenizer's ``<IMG_CONTEXT>`` id (the original config does not store it;
    the default is the real tokenizers' id). RoPE is written as ``rope_theta``/``rope_scaling``, which
    transformers 4.57 reads and 5.x converts.
    """
    if original.get("ps_version", "v1") != "v2":
        raise ValueError("transformers' InternVL implements pixel shuffle v2 only; "
                         f"this checkpoint uses {original.get('ps_version', 'v1')!r}")
    family, vision, llm = by_name(_lm_arch(original)), original["vision_config"], original["llm_config"]
    image_size = original.get("force_image_size") or vision["image_size"]
    patch = vision["patch_size"]
    vision_hf = {hf_key: vision[key] for key, hf_key in VISION_CONFIG_KEYS if key in vision}
    vision_hf.update(model_type="internvl_vision", image_size=[image_size, image_size],
                     patch_size=[patch, patch], use_absolute_position_embeddings=True, use_mean_pooling=True)
    text = {key: llm[key] for key in SHARED_TEXT_KEYS + family.text_only_keys if key in llm}
    text.update(model_type=family.hf_text_model_type, architectures=[family.hf_text_architecture],
                rope_theta=llm.get("rope_theta", 10000.0))
    if llm.get("rope_scaling"):
        scaling = llm["rope_scaling"]
        text["rope_scaling"] = {"rope_type": scaling.get("rope_type", scaling.get("type")),
                                "factor": scaling["factor"]}
    if family.original_bias_key:  # a Llama-form text config: bias, head size spelled out
        text.update(attention_bias=llm.get(family.original_bias_key, True), mlp_bias=False,
                    head_dim=llm["hidden_size"] // llm["num_attention_heads"])
    ratio = original.get("downsample_ratio", 0.5)
    tie = bool(original.get("tie_word_embeddings", llm.get("tie_word_embeddings", False)))
    hf = {"architectures": ["InternVLForConditionalGeneration"], "model_type": "internvl",
          "vision_config": vision_hf, "text_config": text, "downsample_ratio": ratio,
          "image_seq_length": int((image_size // patch) ** 2 * ratio ** 2),
          "image_token_id": family.image_token_id if image_token_id is None else image_token_id,
          "projector_hidden_act": "gelu", "vision_feature_layer": original.get("select_layer", -1),
          "vision_feature_select_strategy": "default", "tie_word_embeddings": tie}
    if original.get("torch_dtype"):
        hf["torch_dtype"] = original["torch_dtype"]
    return hf


def hf_config_to_original(hf: Mapping, **original_fields) -> dict:
    """Translate an ``InternVLConfig`` dict to an original ``InternVLChatModel`` config.json dict.

    Fields the transformers-native config has no place for (``template``, ``max_dynamic_patch``, …)
    take :data:`ORIGINAL_DEFAULTS` (InternVL2.5 / InternVL3 values) unless given as keyword arguments.
    """
    if hf.get("vision_feature_select_strategy", "default") != "default":
        raise ValueError("the original InternVL always drops the class token (strategy 'default')")
    family, vision, text = by_name(_lm_arch(hf)), hf["vision_config"], hf["text_config"]
    image_size, patch = _side(vision["image_size"]), _side(vision["patch_size"])
    vision_orig = {key: vision[hf_key] for key, hf_key in VISION_CONFIG_KEYS if hf_key in vision}
    vision_orig.update(architectures=["InternVisionModel"], auto_map=dict(INTERN_VIT_AUTO_MAP),
                       model_type="intern_vit_6b", image_size=image_size, patch_size=patch,
                       drop_path_rate=0.0, use_flash_attn=False)
    llm = {key: text[key] for key in SHARED_TEXT_KEYS + family.text_only_keys if key in text}
    theta, scaling = _hf_rope(text)
    llm.update(architectures=[family.original_architecture], model_type=family.original_model_type,
               rope_theta=theta, rope_scaling=scaling)
    if family.original_auto_map:  # remote code reads rope_scaling["type"] only
        llm["auto_map"] = dict(family.original_auto_map)
    elif scaling is not None:  # transformers' own class reads "rope_type"
        llm["rope_scaling"] = {**scaling, "rope_type": scaling["type"]}
    if family.original_bias_key:
        llm[family.original_bias_key] = bool(text.get("attention_bias", False))
    llm.update(family.extra)
    tie = bool(hf.get("tie_word_embeddings", text.get("tie_word_embeddings", False)))
    llm["tie_word_embeddings"] = tie
    original = {"architectures": ["InternVLChatModel"], "auto_map": dict(ORIGINAL_AUTO_MAP),
                "model_type": "internvl_chat", "vision_config": vision_orig, "llm_config": llm,
                "downsample_ratio": hf.get("downsample_ratio", 0.5),
                "select_layer": hf.get("vision_feature_layer", -1), "force_image_size": image_size,
                "tie_word_embeddings": tie, **ORIGINAL_DEFAULTS, **original_fields}
    dtype = hf.get("torch_dtype") or hf.get("dtype")
    if dtype:
        original["torch_dtype"] = dtype
    return original


def _side(size) -> int:
    """InternVL tiles are square: ``448`` or ``[448, 448]`` -> 448."""
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"non-square size {size} is not an InternVL tile")
        return int(size[0])
    return int(size)


# safetensors checkpoint dirs


def read_config(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))


def image_context_id(directory: str | Path, token: str = "<IMG_CONTEXT>") -> int:
    """The id of ``<IMG_CONTEXT>`` from a checkpoint's tokenizer files (original configs do not record it).

    Reads ``added_tokens.json``, ``tokenizer_config.json`` (``added_tokens_decoder``) or ``tokenizer.json``
    (``added_tokens``) as JSON; no tokenizer code runs.
    """
    directory = Path(directory)

    def load(name: str) -> dict:
        path = directory / name
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}

    if token in load("added_tokens.json"):
        return int(load("added_tokens.json")[token])
    for token_id, entry in (load("tokenizer_config.json").get("added_tokens_decoder") or {}).items():
        if entry.get("content") == token:
            return int(token_id)
    for entry in load("tokenizer.json").get("added_tokens") or []:
        if entry.get("content") == token:
            return int(entry["id"])
    raise ValueError(f"{directory}: no tokenizer file defines {token} (needed for an original-format checkpoint)")


def read_hf_config(directory: str | Path) -> dict:
    """The transformers-native config of a checkpoint dir of either format.

    For an original dir, ``image_token_id`` is the ``<IMG_CONTEXT>`` id of the dir's own tokenizer
    (the original config.json does not record it).
    """
    config = read_config(directory)
    if detect_format(config) == "hf":
        return config
    return original_config_to_hf(config, image_context_id(directory))


def iter_checkpoint_tensors(directory: str | Path) -> Iterator:
    """Stream ``(name, tensor)`` from a safetensors checkpoint dir (sharded with an index, or one file)."""
    from safetensors import safe_open

    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = list(dict.fromkeys(weight_map.values()))
    elif (directory / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors(.index.json) in {directory}")
    for shard in shards:
        with safe_open(str(directory / shard), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name)
