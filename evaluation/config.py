"""The ``eval:`` section of a recipe: the evaluation protocol, its engine and its scorers.

Defaults are the paper's protocol (App. C): zero-shot, the slow-thinking system prompt, temperature
1.0, top-p 0.8, 16,384 output tokens, the benchmark's response hint before the question. Scoring
defaults to rules (the project's verifier) so that a run needs nothing but the model; the paper's
scoring — answers extracted by an instruction model with the extraction prompt, MMMU / MathVerse /
MV-MATH judged by it — is ``extract: llm`` and ``judge: llm`` with ``llm.base_url`` pointing at an
OpenAI-compatible server (e.g. ``vllm serve Qwen/Qwen2.5-72B-Instruct``).

``load_config(recipe, overrides)`` reads the section (overrides such as ``eval.samples=4`` or just
``samples=4``); prompt paths are relative to the working directory (the rule of every recipe path), a
``prompts/*.txt`` absent there falling back to the shipped ``configs/prompts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rollout.config import VerifierConfig
from rollout.engine_api import EngineConfig
from sophia_common.config import KNOWN_SECTIONS, ConfigError, build, doc, read_recipe

SECTION = "eval"


@dataclass
class PolicyConfig(EngineConfig):
    """The model under evaluation: its engine and sampling (``model`` is usually given as --model)."""

    temperature: float = doc("sampling temperature (paper: 1.0; 0 = greedy, samples must be 1)", 1.0)
    top_p: float = doc("nucleus sampling mass (paper: 0.8)", 0.8)
    max_tokens: int = doc("most output tokens per response (paper: 16,384); a response cut here is "
                          "'truncated' and scores 0", 16384)
    max_tiles: int = doc("InternVL dynamic tiling: most tiles per image (plus a thumbnail)", 12)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_tiles < 1:
            raise ValueError("max_tiles must be >= 1")


@dataclass
class LLMScorerConfig:
    """The served instruction model that extracts answers and judges them (paper: Qwen2.5-72B-Instruct)."""

    base_url: str = doc("http://host:port of an OpenAI-compatible server; empty: no LLM scoring", "")
    model: str | None = doc("served model name; null: the server's first model", None)
    max_tokens: int = doc("most tokens of one extraction or judgement", 512)
    concurrency: int = doc("requests in flight to the server", 16)
    timeout_s: float = doc("seconds one request may take before it is retried", 600.0)


@dataclass
class EvalConfig:
    """The ``eval:`` section of a recipe."""

    samples: int = doc("K responses per question: pass@1 is their mean, pass@K whether any is right", 1)
    system_prompt: str = doc("system prompt file (paper: the slow-thinking one); relative to the working directory",
                             "prompts/slow_thinking_system.txt")
    response_hint: bool = doc("put the benchmark's response hint before the question where it has one "
                              "(paper)", True)
    extract: Literal["rules", "llm"] = doc("answer extraction: rules (the project's extractor) or llm "
                                           "(extract_prompt through llm; paper)", "rules")
    judge: Literal["rules", "llm"] = doc("equivalence on MMMU, MathVerse and MV-MATH: rules (the project's "
                                         "verifier) or llm (judge_prompt through llm; paper)", "rules")
    extract_prompt: str = doc("extraction prompt with {question} and {response}", "prompts/eval_extract.txt")
    judge_prompt: str = doc("judge prompt with {question}, {answer} and {extracted}", "prompts/eval_judge.txt")
    llm: LLMScorerConfig = doc("the extractor / judge server", default_factory=LLMScorerConfig)
    policy: PolicyConfig = doc("the evaluated model's engine and sampling", default_factory=PolicyConfig)
    verifier: VerifierConfig = doc("rule verification (killable workers)", default_factory=VerifierConfig)
    batch_size: int = doc("requests per engine call and per stored shard", 64)
    composite_side: int = doc("multi-image questions: side in pixels of each image in the one composite "
                              "image the engines take", 448)

    def __post_init__(self) -> None:
        if min(self.samples, self.batch_size, self.composite_side) < 1:
            raise ValueError("samples, batch_size and composite_side must be >= 1")
        if self.policy.temperature == 0 and self.samples > 1:
            raise ValueError("greedy decoding (policy.temperature 0) gives one response; set samples=1")
        if "llm" in (self.extract, self.judge) and not self.llm.base_url:
            raise ValueError(f"extract={self.extract}, judge={self.judge} need llm.base_url (an OpenAI-"
                             "compatible server of the extractor/judge model), or set both to rules")

    def uses_llm(self) -> bool:
        return "llm" in (self.extract, self.judge)


def _qualified(overrides: list[str]) -> list[str]:
    """``samples=4`` means ``eval.samples=4``: only this section is read here."""
    return [item if item.split("=", 1)[0].split(".")[0] in KNOWN_SECTIONS else f"{SECTION}.{item}"
            for item in overrides]


def load_config(recipe: str | Path | None, overrides: list[str] | None = None) -> EvalConfig:
    """The ``eval:`` section of ``recipe`` with ``overrides``; every bad key is one error line."""
    raw = read_recipe(recipe, _qualified(overrides or [])).get(SECTION) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{recipe}: the eval section must be a mapping")
    return build(EvalConfig, raw, SECTION)
