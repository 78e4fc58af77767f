"""sophia_common.tokenizer: one loader for fast (tokenizer.json) and SentencePiece tokenizers."""

from __future__ import annotations

import json
import shutil

import pytest

from sophia_common.tokenizer import HFTokenizer, SentencePieceTokenizer, load_tokenizer
from sophia_tools.tiny.tokenizer import INTERNVL_SPECIAL_TOKENS

KINDS = ("bpe", "sentencepiece")
SAMPLE = ("<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nHow many red  circles are there?"
          " 3 + 14 = 17, \\boxed{12} ≤ π, 你好<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(params=KINDS)
def tokenizer_dir(request, tiny_root):
    return tiny_root[f"tokenizer_{request.param}"]


def test_backend_chosen_by_files(tiny_root):
    assert isinstance(load_tokenizer(tiny_root["tokenizer_bpe"]), HFTokenizer)
    assert isinstance(load_tokenizer(tiny_root["tokenizer_sentencepiece"]), SentencePieceTokenizer)


def test_round_trip(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    ids = tok.encode(SAMPLE)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == SAMPLE
    plain = tok.decode(ids, skip_special_tokens=True)
    assert "<IMG_CONTEXT>" not in plain and "<|im_end|>" not in plain and "How many red  circles" in plain


def test_special_tokens_are_single_ids_from_the_config(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    decoder = {entry["content"]: int(i) for i, entry in config["added_tokens_decoder"].items()}
    assert set(INTERNVL_SPECIAL_TOKENS) | {"<|im_start|>", "<|im_end|>"} <= set(decoder)
    for token, index in decoder.items():
        assert tok.encode(token) == [index], token
        assert tok.token_to_id(token) == index
        assert tok.decode([index]) == token
    ids = tok.encode("a<IMG_CONTEXT><IMG_CONTEXT>b")
    assert ids.count(decoder["<IMG_CONTEXT>"]) == 2


def test_sentencepiece_added_tokens_follow_the_sp_vocab(tiny_root):
    import sentencepiece as spm

    directory = tiny_root["tokenizer_sentencepiece"]
    base = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model")).get_piece_size()
    added = json.loads((directory / "added_tokens.json").read_text())
    assert sorted(added.values()) == list(range(base, base + len(INTERNVL_SPECIAL_TOKENS)))
    tok = load_tokenizer(directory)
    assert tok.vocab_size == base + len(INTERNVL_SPECIAL_TOKENS)
    assert tok.token_to_id("<img>") == added["<img>"]


def test_eos_pad_bos_and_end_of_turn(tiny_root):
    bpe = load_tokenizer(tiny_root["tokenizer_bpe"])
    assert bpe.eos_id == bpe.end_of_turn_id == bpe.token_to_id("<|im_end|>")
    assert bpe.pad_id == bpe.token_to_id("<|endoftext|>") and bpe.bos_id is None and not bpe.add_bos_token
    # InternLM2: eos is </s>, chat turns end in <|im_end|>
    sp = load_tokenizer(tiny_root["tokenizer_sentencepiece"])
    assert (sp.bos_id, sp.eos_id, sp.pad_id) == (1, 2, 2) and sp.add_bos_token
    assert sp.end_of_turn_id == sp.token_to_id("<|im_end|>") != sp.eos_id


def test_vocab_sizes_are_not_multiples_of_128(tokenizer_dir):
    size = load_tokenizer(tokenizer_dir).vocab_size
    assert 900 <= size <= 2000 and size % 128 != 0


def test_agrees_with_transformers_and_tokenizers(tiny_root):
    from tokenizers import Tokenizer as RustTokenizer
    from transformers import AutoTokenizer

    directory = tiny_root["tokenizer_bpe"]
    ours = load_tokenizer(directory).encode(SAMPLE)
    assert AutoTokenizer.from_pretrained(directory)(SAMPLE, add_special_tokens=False)["input_ids"] == ours
    assert RustTokenizer.from_file(str(directory / "tokenizer.json")).encode(SAMPLE).ids == ours
    assert len(AutoTokenizer.from_pretrained(directory)) == load_tokenizer(directory).vocab_size


def test_chat_template_is_internvl_style(tiny_root):
    from jinja2 import Template

    for kind in KINDS:
        template = load_tokenizer(tiny_root[f"tokenizer_{kind}"]).chat_template
        messages = [{"role": "user", "content": "hi"}]
        text = Template(template).render(messages=messages, add_generation_prompt=True)
        assert text.startswith("<|im_start|>system\n") and text.endswith(
            "<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_fingerprint_stable_and_sensitive(tokenizer_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tokenizer_dir, copy)
    original = load_tokenizer(tokenizer_dir).fingerprint()
    assert load_tokenizer(copy).fingerprint() == original and len(original) == 64

    config_path = copy / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config, indent=4, sort_keys=True))  # same content, other formatting
    assert load_tokenizer(copy).fingerprint() == original

    config["chat_template"] += " "
    config_path.write_text(json.dumps(config))
    assert load_tokenizer(copy).fingerprint() != original


def test_fingerprint_changes_with_the_model_file(tiny_root, tmp_path):
    for name, kind in (("tokenizer.json", "bpe"), ("tokenizer.model", "sentencepiece")):
        copy = tmp_path / kind
        shutil.copytree(tiny_root[f"tokenizer_{kind}"], copy)
        before = load_tokenizer(copy).fingerprint()
        if name.endswith(".json"):
            data = json.loads((copy / name).read_text())
            data["model"]["vocab"]["zzzz"] = len(data["model"]["vocab"]) + 500
            (copy / name).write_text(json.dumps(data))
        else:
            (copy / name).write_bytes((copy / name).read_bytes() + b"\0")
        from sophia_common.tokenizer import fingerprint_dir

        assert fingerprint_dir(copy) != before


def test_model_dirs_carry_the_same_tokenizer(tiny_root):
    for key, kind in (("vit300m_qwen2_hf", "bpe"), ("vit300m_internlm2_original", "sentencepiece")):
        reference = load_tokenizer(tiny_root[f"tokenizer_{kind}"]).fingerprint()
        assert load_tokenizer(tiny_root[key]).fingerprint() == reference


def test_missing_tokenizer_names_the_dir(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_tokenizer(tmp_path)
