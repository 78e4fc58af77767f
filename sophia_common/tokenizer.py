"""One tokenizer loader for packing and training, for both tokenizer shapes InternVL ships.

    tok = load_tokenizer(checkpoint_or_tokenizer_dir)
    ids = tok.encode("<|im_start|>user\\n<img><IMG_CONTEXT></img>How many?<|im_end|>\\n")

* A Hugging Face fast tokenizer (``tokenizer.json``, the Qwen2.5-based InternVL checkpoints) is
  read with the ``tokenizers`` library.
* A SentencePiece model (``tokenizer.model``, InternVL2.5-8B's InternLM2 tokenizer, a remote-code
  class in the checkpoint) is read with ``sentencepiece`` directly; the added tokens come from
  ``tokenizer_config.json`` (``added_tokens_decoder``) and ``added_tokens.json``. Text is split on
  the added tokens first, and each plain segment is encoded by SentencePiece, as the remote
  ``InternLM2Tokenizer`` does.

No code shipped inside a checkpoint is ever executed. ``encode`` never adds BOS/EOS: callers that
want the model's BOS read ``add_bos_token`` and ``bos_id``. ``eos_id`` is the tokenizer's
``eos_token``; chat turns end with ``end_of_turn_id`` (``<|im_end|>``), which differs from
``eos_id`` for InternLM2 (``</s>``). ``fingerprint()`` hashes the files that define tokenization,
so a packed dataset can prove which tokenizer produced it.

Importing this module is light; ``tokenizers`` / ``sentencepiece`` load inside ``load_tokenizer``.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

FINGERPRINT_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "added_tokens.json",
                     "special_tokens_map.json")
END_OF_TURN_TOKEN = "<|im_end|>"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _token_content(value) -> str | None:
    """``eos_token`` and friends are either a string or an AddedToken dict with ``content``."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def fingerprint_dir(directory: str | Path) -> str:
    """sha256 over the names and contents of the tokenizer files present in ``directory``.

    JSON files are hashed in canonical form (sorted keys, no whitespace), so re-serialising a file
    without changing its meaning keeps the fingerprint; any change of content changes it.
    """
    digest = hashlib.sha256()
    for name in FINGERPRINT_FILES:
        path = Path(directory) / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if name.endswith(".json"):
            data = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False).encode("utf-8")
        digest.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return digest.hexdigest()


class Tokenizer:
    """Common surface of both backends: special tokens, ids of eos/pad/bos, chat template."""

    kind: str = ""

    def __init__(self, directory: Path, added_tokens: dict[str, int]):
        self.directory = directory
        config = _read_json(directory / "tokenizer_config.json")
        special_map = _read_json(directory / "special_tokens_map.json")
        self.added_tokens = dict(added_tokens)
        self.chat_template: str | None = config.get("chat_template")
        self.add_bos_token = bool(config.get("add_bos_token", False))

        def special_id(key: str) -> int | None:
            content = _token_content(config.get(key)) or _token_content(special_map.get(key))
            return None if content is None else self.token_to_id(content)

        self.bos_id = special_id("bos_token")
        eos_id = special_id("eos_token")
        if eos_id is None:
            raise ValueError(f"tokenizer in {directory} declares no eos_token it knows")
        self.eos_id: int = eos_id
        pad_id = special_id("pad_token")
        self.pad_id: int = self.eos_id if pad_id is None else pad_id
        end_of_turn = self.token_to_id(END_OF_TURN_TOKEN)
        self.end_of_turn_id: int = self.eos_id if end_of_turn is None else end_of_turn

    def fingerprint(self) -> str:
        return fingerprint_dir(self.directory)

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.directory)!r}, vocab_size={self.vocab_size})"


class HFTokenizer(Tokenizer):
    """A ``tokenizer.json`` fast tokenizer, through the ``tokenizers`` library."""

    kind = "hf"

    def __init__(self, directory: Path):
        from tokenizers import Tokenizer as RustTokenizer

        self._tok = RustTokenizer.from_file(str(directory / "tokenizer.json"))
        added = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items()}
        super().__init__(directory, added)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)


class SentencePieceTokenizer(Tokenizer):
    """A ``tokenizer.model`` SentencePiece model plus the added tokens of the tokenizer config."""

    kind = "sentencepiece"

    def __init__(self, directory: Path):
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
        added = self._read_added_tokens(directory)
        self._id_to_added = {i: t for t, i in added.items()}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True))
                                 + ")") if added else None
        super().__init__(directory, added)

    @staticmethod
    def _read_added_tokens(directory: Path) -> dict[str, int]:
        config = _read_json(directory / "tokenizer_config.json")
        added = {entry["content"]: int(i) for i, entry in config.get("added_tokens_decoder", {}).items()}
        for token, index in _read_json(directory / "added_tokens.json").items():
            if added.setdefault(token, int(index)) != int(index):
                raise ValueError(f"{directory}: {token!r} has id {added[token]} in tokenizer_config.json "
                                 f"but {index} in added_tokens.json")
        return added

    def encode(self, text: str) -> list[int]:
        if self._split is None:
            return self._sp.encode(text)
        ids: list[int] = []
        for piece in self._split.split(text):
            if piece in self.added_tokens:
                ids.append(self.added_tokens[piece])
            elif piece:
                ids.extend(self._sp.encode(piece))
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        parts: list[str] = []
        run: list[int] = []
        for index in map(int, ids):
            if index in self._id_to_added:
                if run:
                    parts.append(self._sp.decode(run))
                    run = []
                if not skip_special_tokens:
                    parts.append(self._id_to_added[index])
            else:
                run.append(index)
        if run:
            parts.append(self._sp.decode(run))
        return "".join(parts)

    def token_to_id(self, token: str) -> int | None:
        if token in self.added_tokens:
            return self.added_tokens[token]
        index = self._sp.piece_to_id(token)
        return None if index == self._sp.unk_id() and token != self._sp.id_to_piece(index) else index

    @property
    def vocab_size(self) -> int:
        return max(self._sp.get_piece_size(), max(self.added_tokens.values(), default=-1) + 1)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load the tokenizer of a checkpoint or tokenizer dir; ``tokenizer.json`` wins over ``.model``."""
    directory = Path(directory)
    if (directory / "tokenizer.json").is_file():
        return HFTokenizer(directory)
    if (directory / "tokenizer.model").is_file():
        return SentencePieceTokenizer(directory)
    raise FileNotFoundError(f"no tokenizer in {directory}: expected tokenizer.json (Hugging Face fast "
                            f"tokenizer) or tokenizer.model (SentencePiece)")
