"""The rollout's prompts: the caption prompt x_d and the simulated-seeing prompt x̂(q, c) (docs/ALGORITHM.md §1.1).

What: ``Prompts.load(config)`` reads the four prompt files a recipe names (``rollout.prompts``;
relative paths are relative to the working directory, like every path of a recipe; a default
``prompts/*.txt`` that is not there is read from the shipped ``configs/prompts/``) and builds the
chat messages of the two generating stages:

* ``caption_messages()`` — the policy InternVL's user turn for captioning. The question is never
  shown, so a caption cannot leak the answer; the engine puts the image before the text. No
  system turn is sent: the model's chat template adds its own default one.
* ``reasoning_messages(question, caption)`` — the reasoning LLM's single user turn: the caption
  stands in for the image, and the model reasons as if it saw it, ending in ``\\boxed{}``. No
  system turn either: QwQ and DeepSeek-R1 are meant to get every instruction in the user turn.

The slow-thinking and default system prompts are not used for generation here; they belong to
training samples (``rollout.pack`` picks one per response) and are loaded and checked with the
rest so a recipe's prompt set is validated in one place.

Why files: prompts are part of the experiment, reviewed and versioned like recipes, and long.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sophia_common.cli import UserError
from sophia_common.config import doc

DEFAULT_PROMPT_DIR = Path(__file__).resolve().parents[1] / "configs" / "prompts"
CAPTION_PLACEHOLDER = "{caption}"
QUESTION_PLACEHOLDER = "{question}"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_IMAGE_PLACEHOLDER = re.compile(r"<image>\s*")


@dataclass
class PromptsConfig:
    """Prompt files; relative paths are read from the working directory (defaults: the shipped ones)."""

    caption: str = doc("caption prompt x_d: describe the image exhaustively, answer nothing",
                       "prompts/caption.txt")
    simulated_seeing: str = doc("reasoning prompt with {caption} and {question}: reason as if seeing the "
                                "image, final answer in \\boxed{}", "prompts/simulated_seeing.txt")
    slow_thinking_system: str = doc("system prompt of trajectories with <think>...</think> (training, "
                                    "inference)", "prompts/slow_thinking_system.txt")
    default_system: str = doc("system prompt of responses without a think block", "prompts/default_system.txt")


def resolve_prompt_path(value: str, base_dir: Path | None = None) -> Path:
    """A prompt file: absolute as given; else relative to ``base_dir`` (default: the working directory,
    the rule of every recipe path); a ``prompts/...`` path absent there comes from the repository's
    ``configs/prompts`` (the shipped defaults)."""
    path = Path(value)
    if path.is_absolute():
        return path
    candidate = (base_dir or Path.cwd()) / path
    if not candidate.is_file() and path.parts[:1] == ("prompts",):
        shipped = DEFAULT_PROMPT_DIR / Path(*path.parts[1:])
        if shipped.is_file():
            return shipped
    return candidate


def _read(path: Path, key: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UserError(f"rollout.prompts.{key}: cannot read {path} ({exc.strerror or exc})") from exc
    if not text:
        raise UserError(f"rollout.prompts.{key}: {path} is empty")
    return text


@dataclass(frozen=True)
class Prompts:
    caption: str
    simulated_seeing: str
    slow_thinking_system: str
    default_system: str

    def __post_init__(self) -> None:
        for placeholder in (CAPTION_PLACEHOLDER, QUESTION_PLACEHOLDER):
            count = self.simulated_seeing.count(placeholder)
            if count != 1:
                raise UserError(f"rollout.prompts.simulated_seeing must contain {placeholder} exactly once "
                                f"(found {count})")

    @classmethod
    def load(cls, config: PromptsConfig, base_dir: Path | None = None) -> Prompts:
        texts = {key: _read(resolve_prompt_path(getattr(config, key), base_dir), key)
                 for key in ("caption", "simulated_seeing", "slow_thinking_system", "default_system")}
        return cls(**texts)

    def caption_messages(self) -> tuple[dict[str, str], ...]:
        return ({"role": "user", "content": self.caption},)

    def reasoning_messages(self, question: str, caption: str) -> tuple[dict[str, str], ...]:
        """The simulated-seeing user turn; InternVL ``<image>`` placeholders are dropped from the question."""
        question = _IMAGE_PLACEHOLDER.sub("", question).strip()
        # One pass over the template, so a caption that happens to contain "{question}" stays text.
        content = re.sub(r"\{caption\}|\{question\}",
                         lambda match: caption.strip() if match.group() == CAPTION_PLACEHOLDER else question,
                         self.simulated_seeing)
        return ({"role": "user", "content": content},)


_GENERATION_PROMPT = re.compile(r"add_generation_prompt.{0,200}?%\}(?P<body>.{0,200}?)\{%", re.DOTALL)


def chat_template_opens_think(model: str) -> bool:
    """Whether a local checkpoint's chat template ends its generation prompt with ``<think>``.

    QwQ and DeepSeek-R1 do: their completions start inside the think block and only close it.
    Read from ``tokenizer_config.json`` (or ``chat_template.jinja``) without running the template;
    False for a hub id or a checkpoint without a template.
    """
    if not model or not Path(model).is_dir():
        return False
    directory = Path(model)
    template = ""
    if (directory / "chat_template.jinja").is_file():
        template = (directory / "chat_template.jinja").read_text(encoding="utf-8", errors="replace")
    elif (directory / "tokenizer_config.json").is_file():
        import json

        try:
            config = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        template = config.get("chat_template") or ""
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}]
            template = next((t.get("template", "") for t in template if t.get("name") == "default"), "")
    return any(THINK_OPEN in match.group("body") for match in _GENERATION_PROMPT.finditer(template))


def as_thinking_response(text: str) -> str:
    """A trajectory in the ``<think>…</think>answer`` form training expects.

    Reasoning models whose chat template opens the think block in the prompt (QwQ, DeepSeek-R1)
    generate text that starts inside it and only closes it; the opening tag is restored here.
    """
    if THINK_CLOSE in text and THINK_OPEN not in text:
        return f"{THINK_OPEN}\n{text.lstrip()}"
    return text
