"""Tiny tokenizers for offline tests, trained in-process in about a second.

Two shapes, matching what real InternVL checkpoints ship:

* ``bpe`` — a byte-level BPE in the Qwen2 style (NFC, Qwen2's pre-tokenizer regex, byte-level
  bytes), saved as a transformers fast-tokenizer dir (``tokenizer.json`` + ``tokenizer_config.json``
  + ``special_tokens_map.json``). Special tokens are appended after the BPE vocabulary, as in
  Qwen2.5 / InternVL3 (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, then InternVL's
  ``<img>`` … ``</box>``). Loads with ``transformers.AutoTokenizer`` and ``tokenizers.Tokenizer``.
* ``sentencepiece`` — an InternLM2-shaped SentencePiece model (``tokenizer.model``) behind the
  remote-code class ``InternLM2Tokenizer`` (named in ``tokenizer_config.json``, never executed),
  with InternVL's special tokens appended after the SentencePiece vocabulary and listed in
  ``added_tokens_decoder`` / ``added_tokens.json``. Like InternVL2.5-8B, ``eos_token`` is ``</s>``
  while chat turns end with ``<|im_end|>``.
* ``sentencepiece_dummy_prefix`` — the same with SentencePiece's ``add_dummy_prefix`` on (as in
  Llama-style models): every text segment is encoded as if it began with a space, so a response
  tokenised on its own starts with ``▁There`` where the whole conversation has ``There``.
* ``bpe_paragraphs`` — the ``bpe`` shape trained on paragraphs separated by blank lines, so it
  merges ``\n\n`` into one token (as Qwen2's vocabulary does): a response that starts with a
  newline merges with the ``\n`` that ends the prompt.

The corpus is small and embedded (English, digits, math symbols, coloured shapes, counting and
comparison words), because the demos ask counting questions about synthetic images of shapes.
Both tokenizers are deterministic: the same corpus gives byte-identical files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sophia_tools.tiny import build_atomically, write_json

BPE_BASE_VOCAB = 1500  # learned BPE vocabulary before the special tokens are appended
SENTENCEPIECE_VOCAB = 1000  # SentencePiece vocabulary before InternVL's tokens are appended

QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
INTERNLM2_CHAT_TOKENS = ("<|im_start|>", "<|im_end|>", "<|action_start|>", "<|action_end|>",
                         "<|interpreter|>", "<|plugin|>")
INTERNVL_SPECIAL_TOKENS = ("<img>", "</img>", "<IMG_CONTEXT>", "<quad>", "</quad>", "<ref>", "</ref>",
                           "<box>", "</box>")
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

DEFAULT_SYSTEM_MESSAGE = "You are InternVL, a multimodal assistant that answers questions about images."
# InternVL2.5 / InternVL3 chat template: a default system turn, then ChatML turns.
INTERNVL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\n" + DEFAULT_SYSTEM_MESSAGE + "<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Plain ChatML (no default system turn), used by the tiny reasoning LLM.
CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "black", "white", "gray", "pink", "brown")
SHAPES = ("circle", "square", "triangle", "rectangle", "star", "hexagon", "pentagon", "diamond", "ellipse")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve")
CORPUS_TEXT = r"""
The image shows several coloured shapes on a plain background. Count each shape carefully before answering.
Question: How many red circles are there in the image? Answer: There are 3 red circles.
Question: Are there more blue squares than green triangles? Answer: No, there are fewer blue squares.
Let me think step by step. First, I count the circles. Then I count the squares. Finally, I compare them.
The total is the sum of all shapes: 2 + 3 + 4 = 9. Therefore the answer is \boxed{9}.
If x + 5 = 12, then x = 7. If 3x = 18, then x = 6. The area of a square with side 4 is 4^2 = 16.
Compare the numbers: 7 > 5, 2 < 8, 6 = 6, 9 >= 3, 1 <= 4. The difference between 10 and 4 is 6.
The product 6 * 7 = 42 and the quotient 42 / 7 = 6. Half of 18 is 9; double 9 is 18; 25% of 40 is 10.
A triangle has 3 sides, a square has 4 sides, a pentagon has 5 sides and a hexagon has 6 sides.
The largest shape is in the top left corner; the smallest one is at the bottom right. Left, right, up.
Is the number of yellow stars even or odd? Answer: odd. Which colour appears most often? Answer: blue.
Final answer: 12. The answer is (B). Options: (A) 3 (B) 4 (C) 5 (D) 6. Choose the correct option.
We have \frac{1}{2} + \frac{1}{3} = \frac{5}{6}. The square root \sqrt{16} = 4 and \pi is about 3.14159.
Describe the image in detail. The picture contains a large blue circle, two small red squares, a star.
<think> I need to count the objects. There are four of them. </think> The answer is 4.
Wait, let me check again. Hmm, that is not right. Actually, there are five triangles, not four.
A photograph of a kitchen table with a bowl of fruit: apples, bananas, oranges and a bunch of grapes.
The chart plots the temperature for each month; the highest value is in July and the lowest in January.
A person is riding a bicycle along a river while two dogs run beside them under a cloudy sky.
In the diagram, the angle ABC measures 45 degrees and the segment AB is parallel to the line CD.
Solve for y: 2y - 3 = 11, so 2y = 14 and y = 7. Check: 2 * 7 - 3 = 11, which is correct.
The probability of rolling an even number on a fair die is 3/6 = 1/2. The mean of 2, 4 and 9 is 5.
Objects are arranged in a grid of rows and columns; each row holds the same number of items.
The caption should mention every object, its colour, its size, its position and how many there are.
Reasoning carefully, I notice that the overlapping shapes hide part of a circle, so I count it once.
Because each small square is smaller than the circle, the circle is the biggest object in the scene.
Given the description, the question asks which group is larger, so I subtract the two counts.
Summary: the scene is simple, the colours are bright and distinct, and the shapes do not overlap.
Numbers: zero, one, two, three, four, five, six, seven, eight, nine, ten, hundred, thousand, million.
Words: more, less, fewer, greater, equal, same, different, most, least, total, each, every, both, none.
Positions: left, right, top, bottom, middle, center, corner, edge, inside, outside, between, next to.
Sizes: tiny, small, medium, large, huge, tall, short, wide, narrow, thick, thin, long, big, little.
Verbs: count, compare, add, subtract, multiply, divide, estimate, measure, describe, explain, verify.
The assistant writes a detailed description of the picture without answering any question about it.
You can see the image through the description; reason about it and give the final answer in a box.
Mathematics: integer, fraction, decimal, percent, ratio, equation, variable, function, graph, angle.
Geometry: radius, diameter, circumference, perimeter, area, volume, vertex, edge, face, polygon.
However, since the two groups have the same size, neither is larger, and the answer is equal.
Overall, the answer must be a single number, a word such as yes or no, or the letter of an option.
""".strip()


def corpus_lines() -> list[str]:
    """The embedded training corpus: fixed text plus deterministic sentences about shapes and counts."""
    lines = CORPUS_TEXT.splitlines()
    for i, colour in enumerate(COLOURS):
        for j, shape in enumerate(SHAPES):
            count = (3 * i + j) % 10 + 1
            other = SHAPES[(j + 1) % len(SHAPES)]
            lines.append(f"There are {count} {colour} {shape}s and {NUMBER_WORDS[count % 13]} {other}s.")
            lines.append(f"How many {colour} {shape}s are in the image? The answer is {count}.")
            lines.append(f"Is the {colour} {shape} bigger than the {other}? Yes; {count + 2} > {count}.")
    for a in range(13):
        b = (a * 7) % 13
        lines.append(f"{a} + {b} = {a + b}, {a} * {b} = {a * b}, {NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]}.")
    return lines


def _train_bpe(lines: list[str] | None = None):
    """Byte-level BPE in Qwen2's layout; the special tokens are appended after the learned vocab."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_BASE_VOCAB, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(corpus_lines() if lines is None else lines, trainer=trainer)
    tokenizer.add_special_tokens(list(QWEN_SPECIAL_TOKENS + INTERNVL_SPECIAL_TOKENS))
    return tokenizer


def _added_token_entry(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}


def _paragraphs() -> list[str]:
    lines = corpus_lines()
    # Without the final period, the blank line is a pre-token of its own and "\n\n" is learned.
    return ["\n\n".join(line.rstrip(".") for line in lines[start:start + 3]) for start in range(0, len(lines), 3)]


def _write_bpe(out: Path, chat_template: str, paragraphs: bool = False) -> None:
    tokenizer = _train_bpe(_paragraphs() if paragraphs else None)
    tokenizer.save(str(out / "tokenizer.json"))
    specials = QWEN_SPECIAL_TOKENS + INTERNVL_SPECIAL_TOKENS
    decoder = {str(tokenizer.token_to_id(t)): _added_token_entry(t) for t in specials}
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:] + INTERNVL_SPECIAL_TOKENS),
        "bos_token": None,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    write_json(out / "tokenizer_config.json", config)
    write_json(out / "special_tokens_map.json", {
        "additional_special_tokens": config["additional_special_tokens"],
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})


def _train_sentencepiece(dummy_prefix: bool = False) -> bytes:
    """An InternLM2-shaped SentencePiece BPE model: <unk>=0, <s>=1, </s>=2, chat tokens as pieces."""
    import io

    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()), model_writer=model, model_type="bpe",
        vocab_size=SENTENCEPIECE_VOCAB, hard_vocab_limit=False, character_coverage=1.0,
        byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        add_dummy_prefix=dummy_prefix, remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, user_defined_symbols=list(INTERNLM2_CHAT_TOKENS),
        num_threads=1, minloglevel=2,
    )
    return model.getvalue()


def _write_sentencepiece(out: Path, chat_template: str, dummy_prefix: bool = False) -> None:
    import sentencepiece as spm

    model_bytes = _train_sentencepiece(dummy_prefix)
    (out / "tokenizer.model").write_bytes(model_bytes)
    processor = spm.SentencePieceProcessor(model_proto=model_bytes)
    base = processor.get_piece_size()
    in_vocab = ["<unk>", "<s>", "</s>", *INTERNLM2_CHAT_TOKENS]
    decoder = {str(processor.piece_to_id(t)): _added_token_entry(t) for t in in_vocab}
    appended = {t: base + i for i, t in enumerate(INTERNVL_SPECIAL_TOKENS)}
    decoder.update({str(i): _added_token_entry(t) for t, i in appended.items()})
    additional = list(INTERNLM2_CHAT_TOKENS + INTERNVL_SPECIAL_TOKENS)
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": additional,
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer",
                                       "tokenization_internlm2_fast.InternLM2TokenizerFast"]},
        "bos_token": "<s>",
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": 32768,
        "pad_token": "</s>",
        "tokenizer_class": "InternLM2Tokenizer",
        "unk_token": "<unk>",
    }
    write_json(out / "tokenizer_config.json", config)
    write_json(out / "added_tokens.json", appended)
    write_json(out / "special_tokens_map.json", {
        "additional_special_tokens": additional, "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "</s>", "unk_token": "<unk>"})


TOKENIZER_KINDS = {
    "bpe": _write_bpe,
    "sentencepiece": _write_sentencepiece,
    "sentencepiece_dummy_prefix": lambda out, template: _write_sentencepiece(out, template, dummy_prefix=True),
    "bpe_paragraphs": lambda out, template: _write_bpe(out, template, paragraphs=True),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")


def build_tokenizer(out: str | Path, kind: str = "bpe", chat_template: str = INTERNVL_CHAT_TEMPLATE) -> Path:
    """Train a tiny tokenizer of ``kind`` (a key of ``TOKENIZER_KINDS``) into ``out``; reuse it if present."""
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {sorted(TOKENIZER_KINDS)}")
    out = Path(out)
    stamp = {"kind": kind, "chat_template": chat_template}
    return build_atomically(out, stamp, lambda tmp: TOKENIZER_KINDS[kind](tmp, chat_template))


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    """Copy the tokenizer files present in ``src`` into the model dir ``dst``."""
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, Path(dst) / name)
