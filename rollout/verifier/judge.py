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
``stats``). Verdicts are cached in a JSON-lines file under the judge's name (served model + prompt
hash), so a rerun or a resumed stage asks the server only for new items. A server that is down
raises one clear ``UserError`` naming the URL (``on_unreachable="error"``) or leaves the rule
verdicts (``"rules"``, counted as ``unreachable``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rollout.verifier.extract import strip_think
from rollout.verifier.pool import Result
from sophia_common.cli import UserError

JUDGEABLE = frozenset({"mismatch", "unparsable", "no_answer", "too_long", "timeout", "memory", "error"})
MAX_RESPONSE_CHARS = 3000  # the end of the solution: the final answer is there
_VERDICT = re.compile(r"judge?ment\s*[:=]?\s*\**\s*([01])\b", re.IGNORECASE)
_LEADING_DIGIT = re.compile(r"\s*\**\s*([01])\b")


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
    on_unreachable: str = "error"  # error | rules
    cache_path: str | None = None  # JSON lines of verdicts; None: no cache


def parse_judgement(reply: str) -> bool | None:
    """``True`` / ``False`` from "Judgement: 1" / "Judgement: 0" (or a reply starting with the digit)."""
    found = _VERDICT.findall(reply)
    if found:
        return found[-1] == "1"
    leading = _LEADING_DIGIT.match(reply)
    return None if leading is None else leading.group(1) == "1"


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

    def __init__(self, settings: JudgeSettings, client=None) -> None:
        if settings.endpoint not in ("chat", "completions") or settings.on_unreachable not in ("error", "rules"):
            raise UserError(f"judge: endpoint must be chat|completions and on_unreachable error|rules, got "
                            f"{settings.endpoint!r} and {settings.on_unreachable!r}")
        path = Path(settings.prompt_file)
        try:
            self.template = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"judge prompt file {path}: cannot read ({exc})") from None
        missing = [field for field in ("{answer}", "{response}") if field not in self.template]
        if missing:
            raise UserError(f"judge prompt file {path}: missing {', '.join(missing)}")
        self.settings = settings
        self._client = client
        self._cache: dict[str, bool] = {}
        self._lock = threading.Lock()
        self.stats = {"judged": 0, "cached": 0, "overturned": 0, "unparsed": 0, "failed": 0, "unreachable": 0}
        self._name: str | None = None

    @property
    def client(self):
        if self._client is None:
            from rollout.openai_client import OpenAIClient

            s = self.settings
            self._client = OpenAIClient(s.base_url, model=s.model, timeout_s=s.timeout_s, retries=s.retries,
                                        concurrency=s.concurrency)
        return self._client

    def name(self) -> str:
        """``served-model@prompt-hash``: the cache key space (a new prompt or model starts afresh)."""
        if self._name is None:
            model = self.settings.model or self.client.health()
            digest = hashlib.sha256(self.template.encode("utf-8")).hexdigest()[:10]
            self._name = f"{model}@{digest}"
            self._load_cache()
        return self._name

    def prompt(self, item, result: Result) -> str:
        response, gold, choices, question = _fields(item)
        body = strip_think(response) or response
        fields = {"{question}": _question_text(question, choices), "{answer}": gold,
                  "{response}": body[-MAX_RESPONSE_CHARS:].strip(), "{extracted}": result.extracted or "(none)"}
        text = self.template
        for field, value in fields.items():  # not str.format: LaTeX is full of braces
            text = text.replace(field, value)
        return text

    def rejudge(self, items: Sequence, results: Sequence[Result]) -> list[Result]:
        """``results`` with rule-negative, judgeable ones re-judged (order kept)."""
        results = list(results)
        todo = [index for index, result in enumerate(results)
                if not result.correct and result.reason in JUDGEABLE and _fields(items[index])[0].strip()]
        if not todo:
            return results
        try:
            name = self.name()
        except UserError as error:
            return self._unreachable(results, len(todo), error)
        prompts = {index: self.prompt(items[index], results[index]) for index in todo}
        keys = {index: hashlib.sha256(f"{name}\n{prompts[index]}".encode()).hexdigest() for index in todo}
        asked = [index for index in todo if keys[index] not in self._cache]
        self.stats["cached"] += len(todo) - len(asked)
        if asked:
            try:
                self.client.health()
                self._ask(asked, prompts, keys)
            except UserError as error:
                self._unreachable(results, len(asked), error)
        for index in todo:
            verdict = self._cache.get(keys[index])
            if verdict:
                results[index] = replace(results[index], correct=True, reason="judge")
                self.stats["overturned"] += 1
        return results

    def _unreachable(self, results: list[Result], count: int, error: UserError) -> list[Result]:
        """The server is down: one clear error, or (``on_unreachable="rules"``) the rule verdicts stand."""
        if self.settings.on_unreachable == "error":
            raise error
        self.stats["unreachable"] += count
        return results

    def _ask(self, asked: list[int], prompts: dict[int, str], keys: dict[int, str]) -> None:
        from rollout.openai_client import RequestFailure

        settings = self.settings
        sampling = {"n": 1, "max_tokens": settings.max_tokens, "temperature": 0.0, "top_p": 1.0}
        if settings.endpoint == "chat":
            replies = self.client.chat([[{"role": "user", "content": prompts[i]}] for i in asked], **sampling)
        else:
            replies = self.client.complete([prompts[i] for i in asked], **sampling)
        for index, reply in zip(asked, replies, strict=True):
            if isinstance(reply, RequestFailure) or not reply:
                self.stats["failed"] += 1
                continue
            verdict = parse_judgement(reply[0].text)
            if verdict is None:
                self.stats["unparsed"] += 1
                continue
            self.stats["judged"] += 1
            self._remember(keys[index], verdict, reply[0].text)

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
                with open(path, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
