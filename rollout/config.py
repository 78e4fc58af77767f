"""The ``rollout:`` section of a recipe: typed settings of every rollout stage, validated at load.

``load_config(recipe, overrides)`` reads the YAML recipe, applies ``key=value`` overrides
(``rollout.N=4`` or just ``N=4``; lists as ``rollout.inputs=[a.jsonl,b.parquet]``) and builds
``RolloutConfig``; each bad key is one error that names it.

Paths: every relative path of the recipe (inputs, models, ``store_dir``, ``selected_out``, the
prompt files) is relative to the directory the command runs in, whether it comes from the YAML
file or from an override. The only exception are the default prompt files ``prompts/*.txt``:
when such a file does not exist there, the one shipped in the repository's ``configs/prompts/``
is read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rollout.engine_api import EngineConfig
from rollout.prompts import PromptsConfig
from rollout.rewards import Ablation
from sophia_common.cli import UserError
from sophia_common.config import KNOWN_SECTIONS, build, doc, read_recipe


@dataclass
class CaptionerConfig(EngineConfig):
    """The policy InternVL writing captions (K per image, no question shown)."""

    K: int = doc("captions per image", 8)
    max_tiles: int = doc("InternVL dynamic tiling: most tiles per image (plus a thumbnail)", 12)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.K < 1 or self.max_tiles < 1:
            raise ValueError("K and max_tiles must be >= 1")


@dataclass
class ReasonerConfig:
    """The text reasoning LLM(s) answering from a caption (QwQ-32B easy, DeepSeek-R1 hard in the paper)."""

    easy: EngineConfig = doc("the reasoner for every question not routed to 'hard'", default_factory=EngineConfig)
    hard: EngineConfig | None = doc("optional reasoner for questions whose difficulty is in hard_difficulties",
                                    None)
    hard_difficulties: list[str] = doc("input 'difficulty' values routed to the hard reasoner", ["hard"])


@dataclass
class VerifierConfig:
    """Rule verification of answers in killable worker processes (rollout, evaluation, GRPO)."""

    timeout_s: float = doc("hard time limit of one symbolic check (seconds); a timeout scores 0", 5.0)
    workers: int = doc("verifier worker processes", 1)
    unfinished_think: Literal["zero", "score"] = doc(
        "a trajectory that opens a <think> block (itself, or through the reasoner's chat template) and "
        "never closes it: 'zero' scores it 0 with reason unfinished_think; 'score' verifies it as is", "zero")


@dataclass
class JudgeConfig:
    """The optional generative judge: a served instruction model re-judges rule-negative answers."""

    enabled: bool = doc("ask the judge about answers the rules found wrong where they could have missed "
                        "(mismatch, unparsable, no_answer, too_long, timeout); off: rules only", False)
    model: str = doc("the served model's name (vllm serve NAME), e.g. Qwen/Qwen2.5-72B-Instruct; recorded "
                     "with the prompt's hash in the scores table's provenance", "")
    base_url: str = doc("the judge server, http://HOST:PORT (a trailing /v1 is fine)", "")
    endpoint_file: str = doc("a file holding the judge server's URL, written by launchers/serve.sh (used when "
                             "base_url is empty)", "")
    wait_for_server_s: float = doc("how long to wait at start for endpoint_file; 0: fail at once", 0.0)
    api_key_env: str = doc("environment variable holding the server's API key; empty: no key", "")
    prompt: str = doc("judge prompt file with {answer} and {response} (also {question}, {extracted}); "
                      "relative to the working directory", "prompts/judge.txt")
    endpoint: Literal["chat", "completions"] = doc(
        "chat (the server applies the model's chat template) or completions (the prompt as is)", "chat")
    max_tokens: int = doc("most tokens of one verdict (the reply is 'Judgement: 1' or 'Judgement: 0')", 16)
    timeout_s: float = doc("most seconds to wait for one verdict", 120.0)
    retries: int = doc("retries of a request after a connection error, timeout, 429 or 5xx", 2)
    concurrency: int = doc("requests in flight at once", 8)
    on_error: Literal["fail", "rules"] = doc(
        "a judge server that does not answer: fail (stop the stage, naming the URL) or rules (the rule "
        "verdicts stand, counted as judge_unreachable)", "fail")

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.max_tokens < 1 or self.retries < 0 or self.timeout_s <= 0:
            raise ValueError("need concurrency >= 1, max_tokens >= 1, retries >= 0 and timeout_s > 0")
        if self.enabled and not self.model:
            raise ValueError("enabled: set model, the served judge model's name (its identity in the store)")
        if self.enabled and not (self.base_url or self.endpoint_file):
            raise ValueError("enabled: set base_url (http://HOST:PORT) or endpoint_file")


@dataclass
class RolloutVerifierConfig(VerifierConfig):
    """Answer verification of the score stage: the rules, and optionally a generative judge after them."""

    judge: JudgeConfig = doc("optional generative judge of rule-negative answers (off by default)",
                             default_factory=JudgeConfig)


@dataclass
class RolloutConfig:
    """The ``rollout:`` section of a recipe."""

    inputs: list[str] = doc("input files (parquet / JSONL rows: id, image, question, answer, source, "
                            "difficulty)", [])
    store_dir: str = doc("the resumable store of this run (one directory of tables)", "")
    captioner: CaptionerConfig = doc("the captioning policy InternVL", default_factory=CaptionerConfig)
    reasoner: ReasonerConfig = doc("the reasoning LLM(s)", default_factory=ReasonerConfig)
    N: int = doc("trajectories per caption", 8)
    alpha: float = doc("caption-reward threshold of Eq. 6 (inclusive)", 0.75)
    keep_k: int = doc("trajectories kept per question: the k shortest eligible ones", 1)
    ablation: Ablation = doc("none | random | no_caption_reward | no_shortest (random: keep_k trajectories "
                             "drawn among those that finished, rewards ignored)", "none")
    seed: int = doc("seed of the random ablations' draws", 0)
    verifier: RolloutVerifierConfig = doc("answer verification", default_factory=RolloutVerifierConfig)
    batch_size: int = doc("requests per engine call and per stored shard (images, captions, questions)", 64)
    selected_out: str = doc("export of the selected samples (.parquet or .jsonl); empty: "
                            "STORE_DIR/selected.parquet", "")
    prompts: PromptsConfig = doc("prompt files", default_factory=PromptsConfig)
    namespace: str = doc("keep this run's tables apart from others in the same store: they go under "
                         "STORE_DIR/namespaces/NAME (e.g. one namespace per policy round); empty: STORE_DIR", "")

    def __post_init__(self) -> None:
        if self.N < 1 or self.batch_size < 1:
            raise ValueError("N and batch_size must be >= 1")
        if not 0 <= self.alpha <= 1 or self.keep_k < 1:
            raise ValueError(f"need 0 <= alpha <= 1 and keep_k >= 1, got {self.alpha}, {self.keep_k}")
        if self.namespace and not re.fullmatch(r"[A-Za-z0-9_.-]+", self.namespace):
            raise ValueError(f"namespace {self.namespace!r}: use letters, digits, '_', '.' and '-' only")

    @property
    def store_path(self) -> Path:
        """Where this run's tables are: ``store_dir``, or its namespace inside it."""
        return Path(self.store_dir) / "namespaces" / self.namespace if self.namespace else Path(self.store_dir)

    @property
    def selected_path(self) -> Path:
        return Path(self.selected_out) if self.selected_out else self.store_path / "selected.parquet"


def _qualified(overrides: list[str]) -> list[str]:
    """``N=4`` means ``rollout.N=4``: only this section is read here."""
    return [item if item.split("=", 1)[0].split(".")[0] in KNOWN_SECTIONS else f"rollout.{item}"
            for item in overrides]


def load_config(recipe: str | Path | None, overrides: list[str] | None = None) -> RolloutConfig:
    config = build(RolloutConfig, read_recipe(recipe, _qualified(overrides or [])).get("rollout") or {}, "rollout")
    missing = [name for name in ("inputs", "store_dir") if not getattr(config, name)]
    if missing:
        raise UserError(f"{recipe}: rollout.{' and rollout.'.join(missing)} must be set")
    return config
