"""The architecture of an InternVL checkpoint, read once from its transformers-native config.

``InternVLArch`` is what the converter writes into the Megatron checkpoint's metadata and
what the trainer builds the Megatron model from, so both agree by construction. It covers
the three families of docs/ALGORITHM.md §3: InternViT-300M or -6B tower, the ``mlp1`` projector, and
a Qwen2 or InternLM2 (Llama-style in the transformers-native format) language model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from conversion.families import by_hf_text_model_type


@dataclass(frozen=True)
class VisionArch:
    hidden_size: int
    num_heads: int
    ffn_hidden_size: int
    num_layers: int
    norm_type: Literal["layer_norm", "rms_norm"]
    norm_eps: float
    qkv_bias: bool
    qk_norm: bool
    image_size: int
    patch_size: int
    hidden_act: str = "gelu"

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class LanguageArch:
    family: str  # a row of conversion.families: "qwen2", "internlm2"
    hidden_size: int
    num_heads: int
    num_query_groups: int
    ffn_hidden_size: int
    num_layers: int
    vocab_size: int
    rope_theta: float
    norm_eps: float
    qkv_bias: bool
    max_position_embeddings: int
    rope_scaling: dict[str, Any] | None = None
    qk_norm: bool = False  # per-head q/k RMSNorm (the family row says; Qwen3)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class InternVLArch:
    vision: VisionArch
    language: LanguageArch
    downsample_ratio: float
    projector_act: str
    image_token_id: int
    vision_feature_layer: int = -1

    @property
    def family(self) -> str:
        tower = "vit6b" if self.vision.qk_norm else "vit300m"
        return f"{tower}_{self.language.family}"

    @property
    def tokens_per_tile(self) -> int:
        grid = self.vision.image_size // self.vision.patch_size
        return int(grid * self.downsample_ratio) ** 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InternVLArch:
        return cls(vision=VisionArch(**data["vision"]), language=LanguageArch(**data["language"]),
                   **{k: v for k, v in data.items() if k not in ("vision", "language")})


def padded_vocab_size(vocab_size: int, tp: int, multiple: int = 128) -> int:
    """Megatron pads the vocabulary to a multiple of ``multiple * tp`` (151674 -> 151680 at TP1)."""
    step = multiple * tp
    return int(math.ceil(vocab_size / step) * step)


def _rope_theta(text: dict[str, Any]) -> float:
    if "rope_theta" in text:
        return float(text["rope_theta"])
    params = text.get("rope_parameters") or {}
    return float(params.get("rope_theta", 10000.0))


def _rope_scaling(text: dict[str, Any]) -> dict[str, Any] | None:
    scaling = text.get("rope_scaling")
    params = text.get("rope_parameters") or {}
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    return dict(scaling) if scaling else None


def language_arch(text: dict[str, Any]) -> LanguageArch:
    """From a transformers text config of a known family (``Qwen2Config``, the Llama form of InternLM2)."""
    family = by_hf_text_model_type(text.get("model_type"))
    heads = int(text["num_attention_heads"])
    hidden = int(text["hidden_size"])
    if text.get("head_dim") not in (None, hidden // heads):
        raise ValueError(f"head_dim {text['head_dim']} != hidden_size / num_attention_heads")
    return LanguageArch(
        family=family.name,
        hidden_size=hidden, num_heads=heads,
        num_query_groups=int(text.get("num_key_value_heads") or heads),
        ffn_hidden_size=int(text["intermediate_size"]), num_layers=int(text["num_hidden_layers"]),
        vocab_size=int(text["vocab_size"]), rope_theta=_rope_theta(text),
        norm_eps=float(text.get("rms_norm_eps", family.default_norm_eps)),
        qkv_bias=family.qkv_bias if family.qkv_bias is not None else bool(text.get("attention_bias", False)),
        max_position_embeddings=int(text.get("max_position_embeddings", 32768)),
        rope_scaling=_rope_scaling(text), qk_norm=family.qk_norm,
    )


def vision_arch(vision: dict[str, Any]) -> VisionArch:
    """From a transformers ``InternVLVisionConfig`` dict."""
    image_size = vision.get("image_size", 448)
    patch_size = vision.get("patch_size", 14)
    return VisionArch(
        hidden_size=int(vision["hidden_size"]), num_heads=int(vision["num_attention_heads"]),
        ffn_hidden_size=int(vision["intermediate_size"]), num_layers=int(vision["num_hidden_layers"]),
        norm_type=vision.get("norm_type", "layer_norm"), norm_eps=float(vision.get("layer_norm_eps", 1e-6)),
        qkv_bias=bool(vision.get("attention_bias", False)), qk_norm=bool(vision.get("use_qk_norm", False)),
        image_size=int(image_size[0] if isinstance(image_size, list) else image_size),
        patch_size=int(patch_size[0] if isinstance(patch_size, list) else patch_size),
        hidden_act=vision.get("hidden_act", "gelu"),
    )


def arch_from_hf_config(config: dict[str, Any]) -> InternVLArch:
    """From a transformers-native ``InternVLConfig`` (config.json of an ``-hf`` checkpoint)."""
    if config.get("model_type") != "internvl":
        raise ValueError(f"not a transformers-native InternVL config (model_type={config.get('model_type')!r})")
    layer = config.get("vision_feature_layer", -1)
    if layer != -1 or config.get("vision_feature_select_strategy", "default") != "default":
        raise ValueError("only vision_feature_layer=-1 with the 'default' strategy (class token dropped) "
                         "is supported")
    return InternVLArch(
        vision=vision_arch(config["vision_config"]), language=language_arch(config["text_config"]),
        downsample_ratio=float(config.get("downsample_ratio", 0.5)),
        projector_act=config.get("projector_hidden_act", "gelu"),
        image_token_id=int(config["image_token_id"]), vision_feature_layer=layer,
    )


def _preset(tower: str, lm: dict[str, Any], image_token_id: int) -> InternVLArch:
    vit = {"vit300m": VisionArch(1024, 16, 4096, 24, "layer_norm", 1e-6, True, False, 448, 14),
           "vit6b": VisionArch(3200, 25, 12800, 45, "rms_norm", 1e-6, False, True, 448, 14)}[tower]
    return InternVLArch(vision=vit, language=LanguageArch(**lm), downsample_ratio=0.5, projector_act="gelu",
                        image_token_id=image_token_id)


_NTK = {"type": "dynamic", "factor": 2.0}
# The four targets of docs/ALGORITHM.md §3, for planning before a checkpoint is at hand (sophia-train --dry-run).
PRESETS: dict[str, InternVLArch] = {
    "internvl2_5_8b": _preset("vit300m", dict(family="internlm2", hidden_size=4096, num_heads=32, num_query_groups=8,
                                              ffn_hidden_size=14336, num_layers=32, vocab_size=92553,
                                              rope_theta=1e6, norm_eps=1e-5, qkv_bias=False,
                                              max_position_embeddings=32768, rope_scaling=_NTK), 92546),
    "internvl3_8b": _preset("vit300m", dict(family="qwen2", hidden_size=3584, num_heads=28, num_query_groups=4,
                                            ffn_hidden_size=18944, num_layers=28, vocab_size=151674,
                                            rope_theta=1e6, norm_eps=1e-6, qkv_bias=True,
                                            max_position_embeddings=32768, rope_scaling=_NTK), 151667),
    "internvl2_5_38b": _preset("vit6b", dict(family="qwen2", hidden_size=5120, num_heads=40, num_query_groups=8,
                                             ffn_hidden_size=27648, num_layers=64, vocab_size=151674,
                                             rope_theta=1e6, norm_eps=1e-6, qkv_bias=True,
                                             max_position_embeddings=32768, rope_scaling=_NTK), 151667),
}
PRESETS["internvl3_38b"] = PRESETS["internvl2_5_38b"]
