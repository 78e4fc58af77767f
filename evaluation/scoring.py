"""Scoring a response: extract its final answer, then decide whether it equals the gold answer.

Two extractors and two judges, chosen in the ``eval:`` recipe section:

* extraction by **rules** — the project's extractor (``\\boxed{}``, answer phrases, a short last
  line; the ``<think>`` block skipped), or by an **LLM** — the extraction prompt (paper Fig. A5:
  worked examples, so the model copies the answer instead of solving the question) sent greedily
  to a served instruction model;
* equivalence by **rules** — the project's verifier (OlympiadBench-style: numbers with tolerance,
  fractions, sets, intervals, SymPy in killable workers; an option letter and its text count the
  same), or, for the benchmarks the paper judges that way (MMMU, MathVerse, MV-MATH), by an
  **LLM judge** with the judge prompt (Fig. A6).

A response cut at the token limit scores 0 with reason ``truncated``. Several accepted gold
answers (MMMU's open questions) count as correct when any one matches. A request to the served
model that fails gives no verdict (``None``): the run reports it as missing and the next run
retries it. ``fingerprint(question)`` names the scorer settings a verdict was made under, so a
verdict is reused only under the same settings.

The LLM judge is the project's one generative judge, ``rollout.verifier.judge.GenerativeJudge``
(request, ``Judgement: 0/1`` parsing, in-run cache), given this judge prompt and its placeholders;
prompts are filled and the extractor asked with the same module's ``fill_prompt`` and ``ask_greedy``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evaluation.config import EvalConfig
from evaluation.formats import Question
from rollout.prompts import resolve_prompt_path
from rollout.verifier import VerifierPool, extract_answer
from rollout.verifier.judge import GenerativeJudge, JudgeSettings, ask_greedy, fill_prompt, read_template

_EXTRACTED = re.compile(r"extracted\s+answer\s*[:：]\s*(?P<answer>.*)", re.IGNORECASE | re.DOTALL)
_NO_ANSWER = {"", "none", "null", "n/a", "no answer"}


@dataclass(frozen=True)
class Verdict:
    extracted: str | None
    correct: bool
    reason: str
    method: str


@dataclass(frozen=True)
class Item:
    question: Question
    response: str
    truncated: bool


fill = fill_prompt  # ``{name}`` placeholders replaced in one pass (values may contain braces, e.g. LaTeX)


def _read_prompt(value: str, recipe_dir: Path | None, key: str, placeholders: Sequence[str]) -> str:
    return read_template(resolve_prompt_path(value, recipe_dir), f"eval.{key}", placeholders).strip()


class Scorer:
    """Verdicts for batches of responses; use as a context manager (verifier workers, server client)."""

    def __init__(self, config: EvalConfig, recipe_dir: Path | None = None, client: Any = None):
        self.config = config
        self.extract_prompt = (_read_prompt(config.extract_prompt, recipe_dir, "extract_prompt",
                                            ("question", "response")) if config.extract == "llm" else "")
        self.judge_prompt = (_read_prompt(config.judge_prompt, recipe_dir, "judge_prompt",
                                          ("question", "answer", "extracted")) if config.judge == "llm" else "")
        self.client = client
        if client is None and config.uses_llm():
            from rollout.openai_client import OpenAIClient

            llm = config.llm
            self.client = OpenAIClient(llm.base_url, model=llm.model, timeout_s=llm.timeout_s,
                                       concurrency=llm.concurrency)
        self.pool = VerifierPool(workers=config.verifier.workers, timeout_s=config.verifier.timeout_s)
        self.judge = None
        if config.judge == "llm":
            llm = config.llm
            self.judge = GenerativeJudge(JudgeSettings(base_url=llm.base_url, model=llm.model,
                                                       max_tokens=llm.max_tokens, timeout_s=llm.timeout_s,
                                                       concurrency=llm.concurrency),
                                         self.client, template=self.judge_prompt,
                                         placeholders=("question", "answer", "extracted"))

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.pool.close()
        if self.client is not None and hasattr(self.client, "close"):
            self.client.close()

    def method(self, question: Question) -> str:
        judge = "llm-judge" if question.judged and self.config.judge == "llm" else "rules"
        return f"{self.config.extract}-extract+{judge}"

    def fingerprint(self, question: Question) -> str:
        parts = [self.method(question)]
        if self.config.extract == "llm":
            parts += [self.extract_prompt, str(self.config.llm.model)]
        if question.judged and self.config.judge == "llm":
            parts += [self.judge_prompt, str(self.config.llm.model)]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]

    def score(self, items: Sequence[Item]) -> list[Verdict | None]:
        extractions = self._extract(items)
        extracted = [answer for answer, _ in extractions]
        verdicts: list[Verdict | None] = [None] * len(items)
        to_judge, to_verify = [], []
        for index, (item, (answer, how)) in enumerate(zip(items, extractions, strict=True)):
            method = self.method(item.question)
            if answer is _FAILED:
                continue
            if item.truncated:
                verdicts[index] = Verdict(answer, False, "truncated", method)
            elif answer is None:
                verdicts[index] = Verdict(None, False, how, method)
            elif item.question.judged and self.config.judge == "llm":
                to_judge.append(index)
            else:
                to_verify.append(index)
        for index, verdict in zip(to_judge, self._judge([items[i] for i in to_judge],
                                                        [extracted[i] for i in to_judge]), strict=True):
            verdicts[index] = verdict
        for index, verdict in zip(to_verify, self._verify([items[i] for i in to_verify],
                                                          [extracted[i] for i in to_verify]), strict=True):
            verdicts[index] = verdict
        return verdicts

    # ------------------------------------------------------------ steps

    def _extract(self, items: Sequence[Item]) -> list[tuple[Any, str]]:
        """(answer or None or _FAILED, how) per item."""
        if self.config.extract == "rules":
            return [(found.answer, found.how) for found in map(extract_answer, (i.response for i in items))]
        prompts = [fill(self.extract_prompt, {"question": item.question.question, "response": item.response})
                   for item in items]
        return [(_FAILED, "server") if text is None else (_parse_extracted(text), "no_answer")
                for text in self._ask(prompts)]

    def _judge(self, items: list[Item], extracted: list[str]) -> list[Verdict | None]:
        prompts = [fill(self.judge_prompt, {"question": item.question.question,
                                            "answer": " or ".join(item.question.answers), "extracted": answer})
                   for item, answer in zip(items, extracted, strict=True)]
        verdicts: list[Verdict | None] = []
        for item, answer, judgement in zip(items, extracted, self.judge.judgements(prompts) if prompts else [],
                                           strict=True):
            if judgement.outcome == "failed":
                verdicts.append(None)
                continue
            reason = "judge_unparsable" if judgement.correct is None else "judge"
            verdicts.append(Verdict(answer, bool(judgement.correct), reason, self.method(item.question)))
        return verdicts

    def _verify(self, items: list[Item], extracted: list[str]) -> list[Verdict]:
        """The rule verifier against every accepted gold answer; correct if any one matches."""
        rules_extract = self.config.extract == "rules"
        pairs, owners = [], []
        for index, (item, answer) in enumerate(zip(items, extracted, strict=True)):
            response = item.response if rules_extract else f"\\boxed{{{answer}}}"
            for gold in item.question.answers:
                pairs.append({"response": response, "answer": gold, "choices": item.question.choices})
                owners.append(index)
        results = self.pool.verify_batch(pairs)
        best: dict[int, Any] = {}
        for owner, result in zip(owners, results, strict=True):
            if owner not in best or (result.correct and not best[owner].correct):
                best[owner] = result
        return [Verdict(extracted[i], best[i].correct, best[i].reason, self.method(item.question))
                for i, item in enumerate(items)]

    def _ask(self, prompts: list[str]) -> list[str | None]:
        """Greedy answers of the served model; None where the request failed (retried next run)."""
        return ask_greedy(self.client, prompts, max_tokens=self.config.llm.max_tokens)


_FAILED = object()


def _parse_extracted(text: str) -> str | None:
    match = _EXTRACTED.search(text)
    answer = (match.group("answer") if match else text).strip().strip("`").strip()
    answer = answer.splitlines()[0].strip() if answer else ""
    return None if answer.lower().rstrip(".") in _NO_ANSWER else answer
