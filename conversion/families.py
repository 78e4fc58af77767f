"""The language-model families of InternVL: one row per family, everything the code knows about it.

A family is what sits behind ``language_model.*`` in an InternVL checkpoint. Every fact that
differs between families lives in its row: how each Hugging Face format names the model (the
original remote-code ``llm_config`` and the transformers-native ``text_config``), the
``<IMG_CONTEXT>`` id of its real tokenizer, the remote code it ships, the tensor names of both
formats, whether q/k/v arrive fused, which config keys only it has, and its tokenizer kind.
The converter (``hf_formats``, ``arch``), the tiny fixtures and the tests read the rows; adding a
family (say InternVL3.5's Qwen3, with q/k RMSNorm) is adding a row here plus, for a genuinely new
tensor kind, its Megatron mapping row in ``internvl_mapping``.

Tensor-name rows are ``(original name, transformers-native name)``, ``*`` standing for one dotted
name component; per-layer rows are relative to ``language_model.model.layers.N.``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

# Per-layer names shared by every family written in the Llama style (Qwen2 and Qwen3 in both
# formats; InternLM2 once transformers-native).
LLAMA_STYLE_LAYER_NAMES: tuple[tuple[str, str], ...] = (
    ("self_attn.q_proj.*", "self_attn.q_proj.*"),
    ("self_attn.k_proj.*", "self_attn.k_proj.*"),
    ("self_attn.v_proj.*", "self_attn.v_proj.*"),
    ("self_attn.o_proj.*", "self_attn.o_proj.*"),
    ("mlp.gate_proj.weight", "mlp.gate_proj.weight"),
    ("mlp.up_proj.weight", "mlp.up_proj.weight"),
    ("mlp.down_proj.weight", "mlp.down_proj.weight"),
    ("input_layernorm.weight", "input_layernorm.weight"),
    ("post_attention_layernorm.weight", "post_attention_layernorm.weight"),
)
LLAMA_STYLE_NAMES: tuple[tuple[str, str], ...] = (
    ("language_model.model.embed_tokens.weight", "language_model.model.embed_tokens.weight"),
    ("language_model.model.norm.weight", "language_model.model.norm.weight"),
    ("language_model.lm_head.weight", "language_model.lm_head.weight"),
)
# Keys of a causal-LM config that mean the same in the original llm_config and the HF text_config.
SHARED_TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
                    "rms_norm_eps", "initializer_range", "attention_dropout", "bos_token_id", "eos_token_id",
                    "pad_token_id", "tie_word_embeddings", "use_cache")


@dataclass(frozen=True)
class FusedQKV:
    """One original tensor holding q, k and v, split into three transformers-native ones (dim 0).

    ``packing``: ``"contiguous"`` rows ``[q | k | v]``; ``"grouped"`` InternLM2's ``(h gs d)``: per KV
    group its q heads, then its k head, then its v head.
    """

    original: str
    hf: tuple[str, str, str]
    packing: Literal["contiguous", "grouped"]


@dataclass(frozen=True)
class LanguageFamily:
    name: str  # our name, in family ids such as "vit300m_internlm2"
    original_architecture: str  # llm_config.architectures[0] of an original checkpoint
    original_model_type: str  # llm_config.model_type
    hf_text_model_type: str  # text_config.model_type of a transformers-native checkpoint
    hf_text_architecture: str  # text_config.architectures[0]
    image_token_id: int  # <IMG_CONTEXT> id of the family's real tokenizer (original configs omit it)
    tokenizer: Literal["bpe", "sentencepiece"]  # tokenizer.json (fast BPE) or tokenizer.model
    names: tuple[tuple[str, str], ...]  # (original, hf) whole-model tensor names
    layer_names: tuple[tuple[str, str], ...]  # (original, hf) per-layer tensor names, 1:1
    fused_qkv: FusedQKV | None = None  # per-layer fused attention input, if the original fuses it
    qkv_bias: bool | None = None  # True/False: fixed by the family; None: read from the config
    original_bias_key: str | None = None  # llm_config key of the qkv bias (when qkv_bias is None)
    qk_norm: bool = False  # per-head q/k RMSNorm (Qwen3)
    text_only_keys: tuple[str, ...] = ()  # config keys only this family has (copied across formats)
    original_auto_map: dict[str, str] | None = None  # remote code shipped for the LM (never executed)
    default_norm_eps: float = 1e-6
    extra: dict[str, object] = field(default_factory=dict)  # further llm_config keys the remote code reads


QWEN2 = LanguageFamily(  # InternVL2.5-38B, InternVL3: the remote code uses transformers' Qwen2 itself
    name="qwen2", original_architecture="Qwen2ForCausalLM", original_model_type="qwen2",
    hf_text_model_type="qwen2", hf_text_architecture="Qwen2ForCausalLM", image_token_id=151667,
    tokenizer="bpe", names=LLAMA_STYLE_NAMES, layer_names=LLAMA_STYLE_LAYER_NAMES, qkv_bias=True,
    text_only_keys=("use_sliding_window", "sliding_window", "max_window_layers"),
)
INTERNLM2 = LanguageFamily(  # InternVL2.5-8B: InternLM2.5 in the original, Llama when transformers-native
    name="internlm2", original_architecture="InternLM2ForCausalLM", original_model_type="internlm2",
    hf_text_model_type="llama", hf_text_architecture="LlamaForCausalLM", image_token_id=92546,
    tokenizer="sentencepiece",
    names=(("language_model.model.tok_embeddings.weight", "language_model.model.embed_tokens.weight"),
           ("language_model.model.norm.weight", "language_model.model.norm.weight"),
           ("language_model.output.weight", "language_model.lm_head.weight")),
    layer_names=(("attention.wo.*", "self_attn.o_proj.*"),
                 ("feed_forward.w1.weight", "mlp.gate_proj.weight"),
                 ("feed_forward.w3.weight", "mlp.up_proj.weight"),
                 ("feed_forward.w2.weight", "mlp.down_proj.weight"),
                 ("attention_norm.weight", "input_layernorm.weight"),
                 ("ffn_norm.weight", "post_attention_layernorm.weight")),
    fused_qkv=FusedQKV("attention.wqkv.*", ("self_attn.q_proj.*", "self_attn.k_proj.*", "self_attn.v_proj.*"),
                       "grouped"),
    qkv_bias=None, original_bias_key="bias", default_norm_eps=1e-5,
    original_auto_map={"AutoConfig": "configuration_internlm2.InternLM2Config",
                       "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                       "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
    extra={"attn_implementation": "eager"},
)

FAMILIES: MappingProxyType[str, LanguageFamily] = MappingProxyType({f.name: f for f in (QWEN2, INTERNLM2)})


def _lookup(attribute: str, value: str, where: str) -> LanguageFamily:
    for family in FAMILIES.values():
        if getattr(family, attribute) == value:
            return family
    known = sorted(getattr(f, attribute) for f in FAMILIES.values())
    raise ValueError(f"unsupported InternVL language model {where} {value!r}; expected one of {known}")


def by_name(name: str) -> LanguageFamily:
    return _lookup("name", name, "family")


def by_original_architecture(architecture: str) -> LanguageFamily:
    return _lookup("original_architecture", architecture, "architecture")


def by_hf_text_model_type(model_type: str) -> LanguageFamily:
    return _lookup("hf_text_model_type", model_type, "text model_type")
