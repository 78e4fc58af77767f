"""GRPO rewards as plug-ins (recipe key ``grpo.reward``): ``outcome``, ``judge`` and ``srpo``.

Every plug-in scores a list of ``Scored`` items (question, gold answer, response, whether the
response was cut at the token limit) and returns one ``Reward`` per item: the scalar reward the
advantages are computed from, the binary outcome (the pass rate groups are filtered on) and why.

* ``outcome`` (default) — the project's rule verifier (``rollout.verifier``): 1 if the final
  answer is equivalent to the gold one, else 0; a truncated response scores 0.
* ``judge`` — a generative verifier, as the paper uses: a served instruction model (any
  OpenAI-compatible endpoint, e.g. ``vllm serve``) is asked whether the response's final answer
  matches the gold one. The rule verifier decides first; only its negatives go to the judge (rule
  verifiers miss many right answers, a judge rarely accepts a rule-positive one wrongly).
* ``srpo`` — SRPO's reflection-aware reward (arXiv 2506.01713): for a response
  ``<think>T1</think> A1 <reflection>R</reflection> A2`` the task reward of the final answer A2
  plus a reflection reward ``I_eff + alpha * f_len(L)``: I_eff rewards a reflection that fixes a
  wrong first answer (+0.5), keeps a right one (+0.25), leaves a wrong one wrong (-0.25) or breaks a
  right one (-0.5); the brevity term ``f_len(L) = exp(-|L - T_target| / (T_max - T_target))`` for
  a response of L tokens, 0 beyond T_max, with T_target = 2x and T_max = 2.5x the first think's
  length, alpha = 0.1. A response without a reflection block gets the task reward only.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from sophia_common.config import doc
from sophia_common.log import get_logger

log = get_logger("rollout.rl_rewards")
REWARDS = ("outcome", "judge", "srpo")
_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_REFLECTION = re.compile(r"<reflection>(.*?)</reflection>", re.DOTALL)


@dataclass(frozen=True)
class Scored:
    """One response to score."""

    question: str
    answer: str
    response: str
    truncated: bool = False
    num_tokens: int | None = None  # the response's length in tokens (SRPO's brevity term)


@dataclass(frozen=True)
class Reward:
    reward: float
    correct: bool
    reason: str


@dataclass
class JudgeSettings:
    """The served judge model (``grpo.judge``)."""

    url: str = doc("OpenAI-compatible base URL of the judge server, e.g. http://host:8000/v1", "")
    model: str = doc("model name the server serves (vllm serve MODEL)", "")
    max_tokens: int = doc("most tokens of a verdict", 256)
    timeout_s: float = doc("seconds per request before a retry", 120.0)
    retries: int = doc("attempts per request (exponential backoff from 1 s)", 4)


@dataclass
class SrpoSettings:
    """SRPO's reflection reward (``grpo.srpo``)."""

    alpha: float = doc("weight of the brevity term f_len (SRPO: 0.1)", 0.1)
    target_ratio: float = doc("T_target = this x the first think's length (SRPO: 2)", 2.0)
    max_ratio: float = doc("T_max = this x the first think's length (SRPO: 2.5)", 2.5)
    effect: list[float] = doc("I_eff for wrong->right, right->right, wrong->wrong, right->wrong",
                              [0.5, 0.25, -0.25, -0.5])


@dataclass
class RewardSettings:
    kind: Literal["outcome", "judge", "srpo"] = "outcome"
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    srpo: SrpoSettings = field(default_factory=SrpoSettings)


# ---------------------------------------------------------------- outcome


def outcome_rewards(items: Sequence[Scored], verify: Callable[[list[dict]], list]) -> list[Reward]:
    """The rule verifier's binary reward; ``verify`` is ``VerifierPool.verify_batch``."""
    results = verify([{"response": i.response, "answer": i.answer, "truncated": i.truncated} for i in items])
    return [Reward(1.0 if r.correct else 0.0, bool(r.correct), r.reason) for r in results]


# ---------------------------------------------------------------- judge

JUDGE_PROMPT = """You are checking a student's answer against the reference answer.
Question: {question}
Reference answer: {answer}
Student response: {response}

Does the final answer of the student response mean the same as the reference answer? Ignore the
reasoning, formatting and units that do not change the value. Reply with one line:
Judgement: Yes   or   Judgement: No"""


def judge_prompt(item: Scored) -> str:
    return JUDGE_PROMPT.format(question=item.question.strip(), answer=item.answer.strip(),
                               response=item.response.strip())


def parse_verdict(text: str) -> bool | None:
    """``True``/``False`` from a judge reply (its last ``Judgement:`` line wins); ``None`` if absent."""
    found = re.findall(r"judge?ment\s*[:：]\s*\**\s*(yes|no|correct|incorrect)\b", text, re.IGNORECASE)
    if not found:
        return None
    return found[-1].lower() in ("yes", "correct")


def ask_openai(settings: JudgeSettings, prompt: str) -> str:
    """One greedy chat completion from the judge server, retried with backoff; raises after the last try."""
    body = json.dumps({"model": settings.model, "messages": [{"role": "user", "content": prompt}],
                       "temperature": 0.0, "max_tokens": settings.max_tokens}).encode()
    url = settings.url.rstrip("/") + "/chat/completions"
    error: Exception | None = None
    for attempt in range(max(1, settings.retries)):
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=settings.timeout_s) as reply:
                return json.loads(reply.read())["choices"][0]["message"]["content"]
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            error = exc
            log.warning("judge %s: attempt %d failed (%s)", url, attempt + 1, exc)
            time.sleep(min(2.0 ** attempt, 30.0) if attempt + 1 < settings.retries else 0)
    raise RuntimeError(f"judge at {url} failed {settings.retries} times: {error}")


def judge_rewards(items: Sequence[Scored], verify: Callable[[list[dict]], list], settings: JudgeSettings,
                  ask: Callable[[JudgeSettings, str], str] = ask_openai) -> list[Reward]:
    """Rule verifier first; its negatives (not truncated) are judged by the served model."""
    if not settings.url or not settings.model:
        raise ValueError("grpo.reward=judge needs grpo.judge.url and grpo.judge.model")
    out = []
    for item, rule in zip(items, outcome_rewards(items, verify), strict=True):
        if rule.correct or item.truncated:
            out.append(rule)
            continue
        verdict = parse_verdict(ask(settings, judge_prompt(item)))
        if verdict is None:
            out.append(Reward(0.0, False, "judge_unparsable"))
        else:
            out.append(Reward(1.0 if verdict else 0.0, verdict, "judge_yes" if verdict else "judge_no"))
    return out


# ---------------------------------------------------------------- SRPO


def reflection_parts(response: str) -> tuple[str, str, str, str] | None:
    """(first think, first-answer text, reflection, final-answer text), or ``None`` without a reflection."""
    reflection = _REFLECTION.search(response)
    think = _THINK.search(response)
    if reflection is None or think is None or think.end() > reflection.start():
        return None
    return (think.group(1), response[:reflection.start()], reflection.group(1),
            response[reflection.end():])


def brevity(length: float, first_think: float, settings: SrpoSettings) -> float:
    """f_len: 1 at T_target, decaying exponentially, 0 beyond T_max (lengths in the same unit)."""
    target, cap = settings.target_ratio * first_think, settings.max_ratio * first_think
    if first_think <= 0 or length > cap:
        return 0.0
    return math.exp(-abs(length - target) / (cap - target))


def effect(first_correct: bool, final_correct: bool, settings: SrpoSettings) -> float:
    fix, keep, miss, spoil = settings.effect
    if final_correct:
        return keep if first_correct else fix
    return spoil if first_correct else miss


def srpo_rewards(items: Sequence[Scored], verify: Callable[[list[dict]], list], settings: SrpoSettings,
                 count_tokens: Callable[[str], int] = lambda text: len(text.split())) -> list[Reward]:
    """Task reward of the final answer plus SRPO's reflection reward (module doc)."""
    parts = [reflection_parts(i.response) for i in items]
    finals = outcome_rewards([Scored(i.question, i.answer, p[3] if p else i.response, i.truncated)
                              for i, p in zip(items, parts, strict=True)], verify)
    reflective = [(index, p) for index, p in enumerate(parts) if p is not None]
    firsts = outcome_rewards([Scored(items[k].question, items[k].answer, p[1]) for k, p in reflective], verify)
    out = [Reward(f.reward, f.correct, f.reason) for f in finals]
    for (index, p), first in zip(reflective, firsts, strict=True):
        item, final = items[index], finals[index]
        length = item.num_tokens if item.num_tokens is not None else count_tokens(item.response)
        bonus = effect(first.correct, final.correct, settings) + settings.alpha * brevity(
            length, count_tokens(p[0]), settings)
        out[index] = Reward(final.reward + bonus, final.correct, f"{final.reason}+reflection")
    return out


def make_reward(settings: RewardSettings, verify: Callable[[list[dict]], list],
                count_tokens: Callable[[str], int] | None = None) -> Callable[[Sequence[Scored]], list[Reward]]:
    """The plug-in ``settings.kind`` names, bound to its settings and the verifier."""
    if settings.kind == "outcome":
        return lambda items: outcome_rewards(items, verify)
    if settings.kind == "judge":
        return lambda items: judge_rewards(items, verify, settings.judge)
    if settings.kind == "srpo":
        counter = count_tokens or (lambda text: len(text.split()))
        return lambda items: srpo_rewards(items, verify, settings.srpo, counter)
    raise ValueError(f"grpo.reward must be one of {REWARDS}, got {settings.kind!r}")
