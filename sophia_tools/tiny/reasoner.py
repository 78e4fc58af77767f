"""A tiny text-only reasoning LLM (random Qwen2) that vLLM's CPU backend can serve.

It stands in for QwQ-32B / DeepSeek-R1 in the rollout's "reason" stage of tests and demos:
``Qwen2ForCausalLM`` with hidden 128, 2 query heads and 1 KV head (head_dim 64 — vLLM's CPU
attention rejects head_dim 16), 2 layers, the tiny byte-level BPE tokenizer with a plain ChatML
template, a ``generation_config.json``, safetensors weights. Random weights generate random text,
which is all the plumbing needs. To try it with vLLM (about 30 s; needs a ``__main__`` guard):

    VLLM_CPU_KVCACHE_SPACE=1 python -c "from vllm import LLM; print(LLM(model=DIR, dtype='bfloat16',
        enforce_eager=True).generate(['Hello'])[0].outputs[0].text)"
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from sophia_common.tokenizer import fingerprint_dir, load_tokenizer
from sophia_tools.tiny import build_atomically, write_json
from sophia_tools.tiny.tokenizer import CHATML_CHAT_TEMPLATE, build_tokenizer, copy_tokenizer_files

REASONER_DIMS = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
                 "intermediate_size": 256, "num_hidden_layers": 2, "max_position_embeddings": 8192}


def _write_reasoner(tmp: Path, seed: int, tokenizer_dir: Path) -> None:
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from sophia_tools.tiny.weights import randomize_parameters_

    tokenizer = load_tokenizer(tokenizer_dir)
    config = Qwen2Config(vocab_size=tokenizer.vocab_size, hidden_act="silu", rms_norm_eps=1e-6,
                         rope_theta=1e6, tie_word_embeddings=False, use_sliding_window=False,
                         bos_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id,
                         pad_token_id=tokenizer.pad_id, **REASONER_DIMS)
    config.architectures = ["Qwen2ForCausalLM"]
    model = Qwen2ForCausalLM(config)
    randomize_parameters_(model, seed)
    config.save_pretrained(tmp)
    tensors = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    write_json(tmp / "generation_config.json", {
        "bos_token_id": tokenizer.pad_id, "eos_token_id": [tokenizer.eos_id, tokenizer.pad_id],
        "pad_token_id": tokenizer.pad_id, "do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 50})
    copy_tokenizer_files(tokenizer_dir, tmp)


def build_reasoner(out: str | Path, seed: int = 0) -> Path:
    """Build the tiny reasoning LLM into ``out`` (reused when already built with the same seed)."""
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer_dir = build_tokenizer(Path(scratch) / "tok", "bpe", chat_template=CHATML_CHAT_TEMPLATE)
        stamp = {"model": "reasoner", "seed": seed, "dims": REASONER_DIMS,
                 "tokenizer": fingerprint_dir(tokenizer_dir)}
        return build_atomically(out, stamp, lambda tmp: _write_reasoner(tmp, seed, tokenizer_dir))
