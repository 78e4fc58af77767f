"""InternVL in Megatron-Core: frozen vision path + Megatron ``GPTModel`` language backbone.

Built from an ``InternVLArch`` (what the converter writes into checkpoint metadata). The
first pipeline stage holds the vision path and the word embeddings; the image embeddings
replace the ``<IMG_CONTEXT>`` token embeddings in order, and the result enters the decoder
as ``decoder_input``. Later stages hold only their block of decoder layers.

State-dict keys: ``vision.tower.*`` and ``vision.projector.*`` (first stage only) and
``language_model.*`` (a GPTModel: ``embedding.word_embeddings``, ``decoder.layers.N.*``,
``decoder.final_layernorm``, ``output_layer``), for both layer specs: the local spec on CPU
and the Transformer Engine spec (fused pre-norms, FP8-capable) on GPU.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from conversion.arch import InternVLArch, padded_vocab_size
from sophia_megatron.model.vision import VisionPath


def language_config(arch: InternVLArch, *, tp: int, pp: int, params_dtype: torch.dtype = torch.float32,
                    sequence_parallel: bool = False, fusions: bool = False, first_stage_layers: int | None = None,
                    last_stage_layers: int | None = None, **overrides: Any) -> Any:
    """The Megatron ``TransformerConfig`` of the language backbone (Qwen2 or InternLM2).

    ``first_stage_layers`` / ``last_stage_layers``: an uneven pipeline split (None: even), placed
    as ``conversion.megatron_layout.stage_sizes`` places it.
    """
    from megatron.core.transformer import TransformerConfig

    from conversion.convert import Layout, check_layout

    # the one TP/PP-vs-architecture check (conversion uses it too)
    check_layout(arch, Layout(tp, pp, first_stage_layers=first_stage_layers, last_stage_layers=last_stage_layers))
    if pp > 1:
        overrides.update(num_layers_in_first_pipeline_stage=first_stage_layers,
                         num_layers_in_last_pipeline_stage=last_stage_layers)
    lm = arch.language
    return TransformerConfig(
        num_layers=lm.num_layers, hidden_size=lm.hidden_size, num_attention_heads=lm.num_heads,
        num_query_groups=lm.num_query_groups, ffn_hidden_size=lm.ffn_hidden_size, kv_channels=lm.head_dim,
        gated_linear_unit=True, activation_func=torch.nn.functional.silu, normalization="RMSNorm",
        layernorm_epsilon=lm.norm_eps, add_bias_linear=False, add_qkv_bias=lm.qkv_bias,
        hidden_dropout=0.0, attention_dropout=0.0, tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp, sequence_parallel=sequence_parallel and tp > 1,
        params_dtype=params_dtype, pipeline_dtype=params_dtype, bf16=params_dtype == torch.bfloat16,
        use_cpu_initialization=not torch.cuda.is_available(), init_method_std=0.02,
        bias_activation_fusion=fusions, bias_dropout_fusion=fusions, masked_softmax_fusion=fusions,
        apply_rope_fusion=fusions and _have_transformer_engine(),  # Megatron's fused RoPE is TE's
        persist_layer_norm=False,  # apex LayerNorm only; RMSNorm layers (local: torch) reject it
        gradient_accumulation_fusion=False,
        **overrides,
    )


def _have_transformer_engine() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformer_engine") is not None


def layer_spec(kind: Literal["local", "te"]) -> Any:
    """Megatron's layer spec; the local one declares its attention mask ``arbitrary``.

    With the local spec, packed samples are kept apart by a block-diagonal causal mask. Under
    ``masked_softmax_fusion`` with fp16/bf16, Megatron's ``FusedScaleMaskSoftmax`` serves a
    ``causal`` mask type with ``ScaledUpperTriangMaskedSoftmax``, which never reads the mask:
    samples of a pack would attend to each other. For any other mask type both the fused kernel
    (``ScaledMaskedSoftmax``) and the torch fallback apply the mask we pass, so the model always
    passes one (``causal_mask`` when the caller gives none).
    """
    from megatron.core.models.gpt import gpt_layer_specs
    from megatron.core.transformer.enums import AttnMaskType

    if kind == "te":
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    attention = spec.submodules.self_attention
    attention.params = {**attention.params, "attn_mask_type": AttnMaskType.arbitrary}
    return spec


def causal_mask(length: int, device: Any = None) -> torch.Tensor:
    """[1, 1, L, L] bool, True = masked: plain causal attention over one sequence."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1).view(1, 1, length, length)


class InternVLModel(nn.Module):
    """One pipeline stage of InternVL; ``forward`` follows Megatron's GPTModel conventions."""

    def __init__(self, arch: InternVLArch, config: Any, *, pre_process: bool, post_process: bool,
                 spec: Literal["local", "te"] = "local", vision_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        from megatron.core.models.gpt import GPTModel

        self.arch, self.config, self.spec = arch, config, spec
        self.pre_process, self.post_process = pre_process, post_process
        self.model_type = None
        tp = config.tensor_model_parallel_size
        self.language_model = GPTModel(
            config=config, transformer_layer_spec=layer_spec(spec),
            vocab_size=padded_vocab_size(arch.language.vocab_size, tp),
            max_sequence_length=arch.language.max_position_embeddings,
            pre_process=pre_process, post_process=post_process,
            share_embeddings_and_output_weights=False, position_embedding_type="rope",
            rotary_base=int(arch.language.rope_theta), scatter_embedding_sequence_parallel=False,
        )
        self.model_type = self.language_model.model_type
        # Read by Megatron's finalize_model_grads on the unwrapped module (PP embedding grads).
        self.share_embeddings_and_output_weights = False
        self.position_embedding_type = "rope"
        self.vision: VisionPath | None = None
        if pre_process:
            self.vision = VisionPath(arch).freeze()
            if vision_dtype is not None:
                self.vision.to(vision_dtype)

    # Megatron's schedules call these on the model chunk.
    def set_input_tensor(self, input_tensor: Any) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
              pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Word embeddings ``[s, b, h]`` with the image embeddings at the ``<IMG_CONTEXT>`` slots."""
        embeddings = self.language_model.embedding(input_ids=input_ids, position_ids=position_ids)
        slots = (input_ids == self.arch.image_token_id).transpose(0, 1)  # [s, b]
        n_slots = int(slots.sum())
        if pixel_values is not None and pixel_values.numel() > 0:
            with torch.no_grad():
                images = self.vision(pixel_values)  # [tiles, tokens_per_tile, h]
            images = images.reshape(-1, images.shape[-1]).to(embeddings.dtype)
            if images.shape[0] != n_slots:
                raise ValueError(f"{images.shape[0]} image embeddings for {n_slots} <IMG_CONTEXT> tokens")
            embeddings = embeddings.masked_scatter(slots.unsqueeze(-1), images)
        elif n_slots:
            raise ValueError(f"{n_slots} <IMG_CONTEXT> tokens but no pixel values")
        if self.config.sequence_parallel:
            from megatron.core import tensor_parallel

            embeddings = tensor_parallel.scatter_to_sequence_parallel_region(embeddings)
        return embeddings

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor,
                attention_mask: torch.Tensor | None, labels: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, packed_seq_params: Any = None) -> torch.Tensor:
        decoder_input = self.embed(input_ids, position_ids, pixel_values) if self.pre_process else None
        if attention_mask is None and self.spec == "local" and packed_seq_params is None:
            attention_mask = causal_mask(input_ids.shape[1], input_ids.device)  # see layer_spec
        output = self.language_model(input_ids, position_ids, attention_mask, decoder_input=decoder_input,
                                     packed_seq_params=packed_seq_params)
        if labels is None or not self.post_process:
            return output
        # [b, s, vocab / TP] -> per-token loss [b, s], with the padded vocabulary rows masked out
        # of the softmax so the loss is the checkpoint's own, whatever the TP padding.
        logits = self.mask_padded_vocab(output).transpose(0, 1).contiguous()
        return self.language_model.compute_language_model_loss(labels, logits)

    def mask_padded_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        from megatron.core import parallel_state

        local = logits.shape[-1]
        start = parallel_state.get_tensor_model_parallel_rank() * local
        real = self.arch.language.vocab_size - start
        if real >= local:
            return logits
        return logits.masked_fill(torch.arange(local, device=logits.device) >= real, torch.finfo(logits.dtype).min)

    def sharded_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        """Only the language model is checkpointed by the trainer (the vision path is frozen)."""
        return self.language_model.sharded_state_dict(*args, prefix="language_model.", **kwargs)
