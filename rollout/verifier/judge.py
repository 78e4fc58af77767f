"""An optional generative judge: a served instruction model re-judges answers the rules found wrong.

Why: rule verifiers miss correct answers written in unusual forms (TinyV measures > 38 % false
negatives on model responses); the paper judges answers that rules cannot match with an instruction
model (Qwen2.5-72B-Instruct). The field's fix, used here, is rules first and a judge **only for
rule-negative cases** — and only for reasons where the rules could have missed: ``mismatch``,
``unparsable``, ``no_answer`` (with text), ``too_long``, ``timeout``, ``memory``, ``error``. Verdicts
the rules are sure of by design — ``structure`` (a part of the gold), ``ambiguous`` (hedging),
``choice``, ``unfinished_think``, ``truncated``, ``empty_gold`` — are never sent, so the judge cannot
reopen the reward hacks the rules close.

How: ``GenerativeJudge(JudgeSettings(base_url=…, model=…))`` talks to any OpenAI-compatible server
(``vllm serve``) through ``rollout.openai_client.OpenAIClient``; the prompt file
(``configs/prompts/judge.txt``) has ``{question}``, ``{answer}``, ``{response}`` and ``{extracted}``
and asks for ``Judgement: 1`` / ``Judgement: 0``. A ``1`` makes the result correct with the reason
``judge``; a ``0``, an unreadable reply or a failed request keeps the rules' verdict (counted in
``stats``; ``last_failed`` names the items whose request failed). Verdicts are cached in a JSON-lines
file under the judge's name (served model + prompt hash), so a rerun or a resumed stage asks the
server only for new items. A server that is down raises one clear ``UserError`` naming the URL
(``on_error="fail"``) or leaves the rule verdicts (``"rules"``, counted as ``unreachable``).

The evaluation's LLM judge (``evaluation.scoring``) uses the same object with its own prompt
template (``template=``, ``placeholders=``) through ``judgements(prompts)``; ``fill_prompt`` and
``ask_greedy`` are the one prompt filler and the one greedy request of every served-model scorer.
``from_config`` builds a judge from the recipe's ``rollout.verifier.judge`` section.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from rollout.verifier.extract import strip_think
from rollout.verifier.pool import Result
from sophia_common.cli import UserError
from sophia_common.log import get_logger

JUDGEABLE = frozenset({"mismatch", "unparsable", "no_answer", "too_long", "timeout", "memory", "error"})
MAX_RESPONSE_CHARS = 3000  # the end of the solution: the final answer is there
JUDGE_REASON = "judge"
CACHE_FILE = "judge_verdicts.jsonl"  # inside the store directory
_VERDICT = re.compile(r"judge?ment\s*[:：=]?\s*\**\s*([01])\b", re.IGNORECASE)
_LEADING_DIGIT = re.compile(r"\s*\**\s*([01])\b")
log = get_logger("sophia.rollout.verifier.judge")


@dataclass(frozen=True)
class JudgeSettings:
    """Where the judge is served and how to ask it (see the module docstring)."""

    base_url: str
    model: str | None = None  # None: the server's only model
    prompt_file: str = "configs/prompts/judge.txt"
    endpoint: str = "chat"  # chat (the server's chat template) | completions (the prompt as is)
    max_tokens: int = 16
    timeout_s: float = 120.0
    retries: int = 2
    concurrency: int = 8
    on_error: str = "fail"  # fail | rules: what a server that does not answer means
    cache_path: str | None = None  # JSON lines of verdicts; None: no cache
    api_key: str | None = None


class Judgement(NamedTuple):
    """One prompt's outcome: ``correct`` (None without a verdict) and how: judged | cached | unparsed | failed."""

    correct: bool | None
    outcome: str


def parse_judgement(reply: str) -> bool | None:
    """``True`` / ``False`` from "Judgement: 1" / "Judgement: 0" (or a reply starting with the digit)."""
    found = _VERDICT.findall(reply)
    if found:
        return found[-1] == "1"
    leading = _LEADING_DIGIT.match(reply)
    return None if leading is None else leading.group(1) == "1"


def fill_prompt(template: str, values: Mapping[str, str]) -> str:
    """``{name}`` placeholders replaced in one pass (values may hold braces, LaTeX, or other placeholders)."""
    pattern = re.compile("|".join(re.escape("{" + name + "}") for name in values))
    return pattern.sub(lambda match: values[match.group()[1:-1]], template)


def prompt_sha256(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def read_template(path: Path, where: str, placeholders: Sequence[str] = ("answer", "response")) -> str:
    """A prompt template, with one ``UserError`` naming ``where`` and the file when it cannot be used."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{where}: cannot read {path} ({exc.strerror or exc})") from None
    missing = ["{" + name + "}" for name in placeholders if "{" + name + "}" not in text]
    if missing:
        raise UserError(f"{where}: {path} is missing {', '.join(missing)}")
    return text


def ask_greedy(client: Any, prompts: Sequence[str], *, endpoint: str = "chat",
               max_tokens: int = 16) -> list[str | None]:
    """The served model's greedy reply to each prompt; None where the request failed."""
    from rollout.openai_client import RequestFailure

    if not prompts:
        return []
    sampling = {"n": 1, "max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0}
    if endpoint == "chat":
        replies = client.chat([[{"role": "user", "content": prompt}] for prompt in prompts], **sampling)
    else:
        replies = client.complete(list(prompts), **sampling)
    return [None if isinstance(reply, RequestFailure) or not reply else reply[0].text for reply in replies]


def _fields(item) -> tuple[str, str, object, str]:
    if isinstance(item, Mapping):
        return item.get("response") or "", str(item.get("answer", "")), item.get("choices"), item.get("question") or ""
    response, gold, *rest = item
    return response or "", str(gold), (rest[0] if rest else None), ""


def _question_text(question: str, choices) -> str:
    if not choices:
        return question or "(not given)"
    pairs = choices.items() if isinstance(choices, Mapping) else zip("ABCDEFGHIJ", choices)
    return (question or "(not given)") + "\nChoices:\n" + "\n".join(f"({key}) {text}" for key, text in pairs)


class GenerativeJudge:
    """Re-judges rule-negative results with a served model; see the module docstring."""

    def __init__(self, settings: JudgeSettings, client=None, *, template: str | None = None,
                 placeholders: Sequence[str] = ("answer", "response")) -> None:
        if settings.endpoint not in ("chat", "completions") or settings.on_error not in ("fail", "rules"):
            raise UserError(f"judge: endpoint must be chat|completions and on_error fail|rules, got "
                            f"{settings.endpoint!r} and {settings.on_error!r}")
        self.template = template if template is not None else read_template(
            Path(settings.prompt_file), "judge prompt file", placeholders)
        self.settings = settings
        self._client = client
        self._cache: dict[str, bool] = {}
        self._lock = threading.Lock()
        self.stats = {"judged": 0, "cached": 0, "overturned": 0, "unparsed": 0, "failed": 0, "unreachable": 0}
        self.last_failed: list[int] = []  # indices of the last rejudge whose request failed (no verdict)
        self._name: str | None = None

    @property
    def client(self):
        if self._client is None:
            from rollout.openai_client import OpenAIClient

            s = self.settings
            self._client = OpenAIClient(s.base_url, api_key=s.api_key, model=s.model, timeout_s=s.timeout_s,
                                        retries=s.retries, concurrency=s.concurrency)
        return self._client

    def name(self) -> str:
        """``served-model@prompt-hash``: the cache key space (a new prompt or model starts afresh)."""
        if self._name is None:
            model = self.settings.model or self.client.health()
            self._name = f"{model}@{prompt_sha256(self.template)[:10]}"
            self._load_cache()
        return self._name

    def prompt(self, item, result: Result) -> str:
        response, gold, choices, question = _fields(item)
        body = strip_think(response) or response
        return fill_prompt(self.template, {"question": _question_text(question, choices), "answer": gold,
                                           "response": body[-MAX_RESPONSE_CHARS:].strip(),
                                           "extracted": result.extracted or "(none)"})

    def rejudge(self, items: Sequence, results: Sequence[Result]) -> list[Result]:
        """``results`` with rule-negative, judgeable ones re-judged (order kept)."""
        results = list(results)
        self.last_failed = []
        todo = [index for index, result in enumerate(results)
                if not result.correct and result.reason in JUDGEABLE and _fields(items[index])[0].strip()]
        if not todo:
            return results
        judgements = self.judgements([self.prompt(items[index], results[index]) for index in todo])
        for index, judgement in zip(todo, judgements, strict=True):
            if judgement.correct:
                results[index] = replace(results[index], correct=True, reason=JUDGE_REASON)
                self.stats["overturned"] += 1
            elif judgement.outcome == "failed":
                self.last_failed.append(index)
        return results

    def judgements(self, prompts: Sequence[str]) -> list[Judgement]:
        """One ``Judgement`` per filled prompt: from the cache, else asked (a down server: ``on_error``)."""
        try:
            name = self.name()
        except UserError as error:
            return self._unreachable(len(prompts), error)
        keys = [hashlib.sha256(f"{name}\n{self.settings.endpoint}\n{prompt}".encode()).hexdigest()
                for prompt in prompts]
        out = [Judgement(self._cache[key], "cached") if key in self._cache else None for key in keys]
        asked = [index for index, judgement in enumerate(out) if judgement is None]
        self.stats["cached"] += len(prompts) - len(asked)
        if asked:
            try:
                self.client.health()
                replies = ask_greedy(self.client, [prompts[i] for i in asked], endpoint=self.settings.endpoint,
                                     max_tokens=self.settings.max_tokens)
            except UserError as error:
                replies = self._unreachable(len(asked), error)
            for index, reply in zip(asked, replies, strict=True):
                out[index] = reply if isinstance(reply, Judgement) else self._read_reply(keys[index], reply)
        return out  # type: ignore[return-value]

    def report(self) -> dict[str, int]:
        """The counts a stage report shows (``judge_overturned`` …); warns about failed requests."""
        stats = self.stats
        if stats["failed"]:
            log.warning("judge: %d request(s) to %s failed; %s", stats["failed"], self.settings.base_url,
                        "the rollout score stage leaves their captions unscored and its next run asks again"
                        if self.settings.on_error == "fail" else "their rule verdicts stand")
        return {"judge_overturned": stats["overturned"], "judge_asked": stats["judged"] + stats["unparsed"],
                "judge_cached": stats["cached"], "judge_unparsed": stats["unparsed"],
                "judge_failed": stats["failed"], "judge_unreachable": stats["unreachable"]}

    def _read_reply(self, key: str, reply: str | None) -> Judgement:
        if reply is None:
            self.stats["failed"] += 1
            return Judgement(None, "failed")
        verdict = parse_judgement(reply)
        if verdict is None:
            self.stats["unparsed"] += 1
            return Judgement(None, "unparsed")
        self.stats["judged"] += 1
        self._remember(key, verdict, reply)
        return Judgement(verdict, "judged")

    def _unreachable(self, count: int, error: UserError) -> list[Judgement]:
        """The server is down: one clear error, or (``on_error="rules"``) no verdicts, counted."""
        if self.settings.on_error == "fail":
            raise error
        self.stats["unreachable"] += count
        return [Judgement(None, "unreachable")] * count

    def _load_cache(self) -> None:
        path = self.settings.cache_path
        if not path or not Path(path).exists():
            return
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: that item is simply asked again
            if row.get("judge") == self._name and isinstance(row.get("correct"), bool):
                self._cache[row["key"]] = row["correct"]

    def _remember(self, key: str, verdict: bool, reply: str) -> None:
        with self._lock:
            self._cache[key] = verdict
            path = self.settings.cache_path
            if path:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                row = {"key": key, "judge": self._name, "correct": verdict, "reply": reply[:200]}
                with open(path, "a", encoding="utf-8") as handle:  # one line per append: writers interleave safely
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def judge_identity(config: Any) -> dict[str, Any] | None:
    """What a store's scores depend on when ``config`` (``rollout.verifier.judge``) is on: served model,
    prompt hash and endpoint (None when the judge is off)."""
    if config is None or not config.enabled:
        return None
    return {"model": config.model, "prompt_sha256": prompt_sha256(_recipe_template(config)),
            "endpoint": config.endpoint}


def _recipe_template(config: Any, section: str = "rollout.verifier.judge") -> str:
    from rollout.prompts import resolve_prompt_path

    return read_template(resolve_prompt_path(config.prompt), f"{section}.prompt")


def open_judge(config: Any, store_root: Path) -> GenerativeJudge | None:
    """The judge of ``rollout.verifier.judge`` (None: off), its verdicts cached in the store directory."""
    return None if config is None or not config.enabled else from_config(config, store_root / CACHE_FILE)


def from_config(config: Any, cache_path: str | Path | None,
                section: str = "rollout.verifier.judge") -> GenerativeJudge:
    """A judge from the recipe section ``section`` (a ``JudgeConfig``; server from base_url or
    endpoint_file); errors name the section's keys."""
    from rollout.openai_engine import api_key, resolve_base_url

    settings = JudgeSettings(base_url=resolve_base_url(config, section), model=config.model,
                             endpoint=config.endpoint, max_tokens=config.max_tokens, timeout_s=config.timeout_s,
                             retries=config.retries, concurrency=config.concurrency, on_error=config.on_error,
                             cache_path=str(cache_path) if cache_path else None, api_key=api_key(config, section))
    return GenerativeJudge(settings, template=_recipe_template(config, section))
