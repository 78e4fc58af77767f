"""Render one training sample as an InternVL chat conversation and tokenise it with an exact loss mask.

What: ``ChatRenderer.tokenize(question, response, plans)`` returns a ``TokenizedSample``: the token
ids of ::

    [BOS]<|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{user}<|im_end|>\\n
    <|im_start|>assistant\\n{response}<|im_end|>\\n       (one string; broken here for width)

and the span of ids the model learns (``response`` + its ``<|im_end|>``; BOS, the prompt and the
trailing ``\\n`` are not targets). ``ChatRenderer.render`` gives the same conversation as text, so a
test can check that the ids decode back to it.

Why this shape (docs/ALGORITHM.md §1.2, §3.3): the system prompt is the slow-thinking one when the response
holds ``<think>…</think>`` and the default one otherwise; the user turn carries the *original*
image(s) and question (SOPHIA trains on the image, never on the caption). Image tokens are expanded
here, as InternVL does (``<img>`` + ``<IMG_CONTEXT>`` x tokens_per_tile x tiles + ``</img>``), so
every length is exact at packing time. A question with ``<image>`` placeholders gets one image per
placeholder, in order; otherwise ``<image>\\n`` is prepended per image (InternVL's convention).

How: the whole conversation is tokenised as one string, and the boundary between prompt and
response is located in it. Encoding the response on its own would not give the same ids: a
SentencePiece model with a dummy prefix turns a response's first word ``There`` into ``▁There``,
which the model never produces after ``assistant\n``. Image token runs are spliced in as ids
rather than encoded from a string of thousands of ``<IMG_CONTEXT>``; both tokenizer kinds split
text at special tokens before anything else, so this gives the ids that encoding the whole string
would. The boundary: the ids of the prompt alone (what the model is given at inference) must be a
prefix of the whole conversation's ids; when they are not, a token spans the boundary (a Qwen2
BPE merges the prompt's closing ``\n`` with a response that starts with a newline), the sample
cannot be split into prompt and response tokens, and it is rejected (``response_merges_with_prompt``)
rather than trained with a prompt the model never sees. Text that contains the template's own
control tokens (``<|im_start|>``, ``<|im_end|>``, ``<img>``, ``</img>``, ``<IMG_CONTEXT>``) would
corrupt the turn structure or the image count, so such a sample is rejected (``RenderRejected``)
instead of rendered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sophia_common.cli import UserError
from sophia_common.images import IMG_CONTEXT, IMG_END, IMG_START, TilePlan, image_dimensions, plan_tiles
from sophia_common.tokenizer import Tokenizer

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_PLACEHOLDER = "<image>"
CONTROL_TOKENS = (IM_START, IM_END, IMG_START, IMG_END, IMG_CONTEXT)
THINKING = re.compile(r"<think>.*?</think>", re.DOTALL)

SPECIAL_TOKEN_IN_TEXT = "special_token_in_text"
IMAGE_PLACEHOLDER_MISMATCH = "image_placeholder_mismatch"
RESPONSE_MERGES_WITH_PROMPT = "response_merges_with_prompt"


class RenderRejected(ValueError):
    """A sample that cannot be rendered faithfully; ``reason`` is its reject reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Tiling:
    """InternVL's dynamic-tiling settings and the image tokens each tile costs."""

    min_tiles: int = 1
    max_tiles: int = 12
    image_size: int = 448
    use_thumbnail: bool = True
    tokens_per_tile: int = 256

    def plan(self, image: Path | bytes) -> TilePlan:
        """The tiling of one image, read from its header only (raises ValueError if unreadable)."""
        width, height = image_dimensions(image)
        return plan_tiles(width, height, min_tiles=self.min_tiles, max_tiles=self.max_tiles,
                          image_size=self.image_size, use_thumbnail=self.use_thumbnail)


@dataclass(frozen=True)
class SystemPrompts:
    """The two system prompts of docs/ALGORITHM.md §1.2; the response decides which one a sample gets."""

    default: str
    slow_thinking: str

    def for_response(self, response: str) -> str:
        return self.slow_thinking if THINKING.search(response) else self.default

    @classmethod
    def from_files(cls, default: Path, slow_thinking: Path) -> SystemPrompts:
        return cls(default=_read_prompt(default), slow_thinking=_read_prompt(slow_thinking))


def _read_prompt(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read system prompt file {path}: {exc}") from exc
    if not text:
        raise UserError(f"system prompt file {path} is empty")
    found = [token for token in CONTROL_TOKENS if token in text]
    if found:
        raise UserError(f"system prompt file {path} contains the template token(s) {', '.join(found)}")
    return text


@dataclass(frozen=True)
class TokenizedSample:
    """One conversation's ids; ``input_ids[target_start:target_end]`` are the loss targets."""

    input_ids: np.ndarray
    target_start: int
    target_end: int
    tile_plans: tuple[TilePlan, ...] = ()

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_tiles(self) -> int:
        return sum(plan.num_tiles for plan in self.tile_plans)

    def loss_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.input_ids), dtype=np.int8)
        mask[self.target_start : self.target_end] = 1
        return mask

    def truncated(self, max_len: int) -> TokenizedSample | None:
        """The sample cut to ``max_len`` ids (the response tail goes); None if no target would remain."""
        if len(self) <= max_len:
            return self
        if self.target_start >= max_len:
            return None
        return replace(self, input_ids=self.input_ids[:max_len], target_end=min(self.target_end, max_len))


class ChatRenderer:
    """InternVL's chat template over one tokenizer, one pair of system prompts and one tiling."""

    def __init__(self, tokenizer: Tokenizer, prompts: SystemPrompts, tiling: Tiling):
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.tiling = tiling
        self._control_ids = {token: self._single_token_id(token) for token in CONTROL_TOKENS}
        self._bos = [tokenizer.bos_id] if tokenizer.add_bos_token and tokenizer.bos_id is not None else []
        self._bos_text = tokenizer.decode(self._bos) if self._bos else ""
        self._system_ids: dict[str, list[int]] = {}

    def _single_token_id(self, token: str) -> int:
        token_id = self.tokenizer.token_to_id(token)
        if token_id is None or self.tokenizer.encode(token) != [token_id]:
            raise UserError(f"tokenizer in {self.tokenizer.directory} has no single token {token!r}; "
                            f"it is not an InternVL chat tokenizer")
        return token_id

    def image_token_ids(self, plan: TilePlan) -> list[int]:
        context = [self._control_ids[IMG_CONTEXT]] * (plan.num_tiles * self.tiling.tokens_per_tile)
        return [self._control_ids[IMG_START], *context, self._control_ids[IMG_END]]

    def _prompt_parts(self, question: str, response: str,
                      plans: tuple[TilePlan, ...]) -> list[str | TilePlan]:
        """The prompt (up to ``<|im_start|>assistant\\n``) as text pieces and images, in order."""
        check_text(question, response, len(plans))
        pieces = question.split(IMAGE_PLACEHOLDER)
        if len(pieces) == 1 and plans:  # InternVL: "<image>\n" per image, then the question
            pieces = [""] + ["\n"] * (len(plans) - 1) + ["\n" + question]
        system = self.prompts.for_response(response)
        parts: list[str | TilePlan] = [f"{IM_START}system\n{system}{IM_END}\n",
                                       f"{IM_START}user\n{pieces[0]}"]
        for plan, text in zip(plans, pieces[1:]):
            parts += [plan, text]
        parts.append(f"{IM_END}\n{IM_START}assistant\n")
        return parts

    def render(self, question: str, response: str, plans: tuple[TilePlan, ...] = ()) -> str:
        """The whole conversation as text (BOS included when the tokenizer adds one)."""
        prompt = "".join(part if isinstance(part, str) else self._image_text(part)
                         for part in self._prompt_parts(question, response, plans))
        return f"{self._bos_text}{prompt}{response}{IM_END}\n"

    def _image_text(self, plan: TilePlan) -> str:
        return IMG_START + IMG_CONTEXT * (plan.num_tiles * self.tiling.tokens_per_tile) + IMG_END

    def tokenize(self, question: str, response: str, plans: tuple[TilePlan, ...] = ()) -> TokenizedSample:
        """Ids of :meth:`render`'s text, with the assistant's response + ``<|im_end|>`` as the target span.

        Raises ``RenderRejected`` (``response_merges_with_prompt``) when no token boundary separates
        the prompt from the response (see the module docstring).
        """
        parts = self._prompt_parts(question, response, plans)
        ids = list(self._bos) + self._system_header_ids(parts[0])
        text = ""
        for part in parts[1:]:
            if isinstance(part, str):
                text += part
                continue
            ids += self.tokenizer.encode(text) + self.image_token_ids(part)
            text = ""
        # ``text`` ends with "<|im_start|>assistant\n": encode it with the response, as one string.
        prompt_tail = self.tokenizer.encode(text)
        tail = self.tokenizer.encode(f"{text}{response}{IM_END}\n")
        if tail[:len(prompt_tail)] != prompt_tail:
            first = next((i for i, (a, b) in enumerate(zip(prompt_tail, tail)) if a != b), len(tail) - 1)
            raise RenderRejected(RESPONSE_MERGES_WITH_PROMPT,
                                 f"the response's first characters merge with the prompt's last ones into "
                                 f"one token ({self.tokenizer.decode(tail[first:first + 1])!r}); the ids cannot "
                                 f"be split into prompt and response")
        target_start = len(ids) + len(prompt_tail)
        end_of_turn = len(tail) - 1 - tail[::-1].index(self._control_ids[IM_END])
        target_end = len(ids) + end_of_turn + 1
        ids += tail
        return TokenizedSample(np.asarray(ids, dtype=np.int32), target_start, target_end, tuple(plans))

    def _system_header_ids(self, header: str) -> list[int]:
        """The system turn is followed by ``<|im_start|>``, a token boundary: encode it once per prompt."""
        if header not in self._system_ids:
            self._system_ids[header] = self.tokenizer.encode(header)
        return self._system_ids[header]


def check_text(question: str, response: str, num_images: int) -> None:
    """Raise ``RenderRejected`` for text that cannot be rendered faithfully (see the module docstring)."""
    for what, text in (("question", question), ("response", response)):
        found = [token for token in CONTROL_TOKENS if token in text]
        if found:
            raise RenderRejected(SPECIAL_TOKEN_IN_TEXT,
                                 f"the {what} contains the template token(s) {', '.join(found)}")
    placeholders = question.count(IMAGE_PLACEHOLDER)
    if placeholders and placeholders != num_images:
        raise RenderRejected(IMAGE_PLACEHOLDER_MISMATCH, f"the question has {placeholders} "
                             f"{IMAGE_PLACEHOLDER} placeholder(s) but the sample has {num_images} image(s)")
