"""The score stage's per-batch work, apart from the stage's store plumbing (``rollout.stages``).

What: ``score_captions`` verifies the trajectories of whole caption groups with the rule verifier
(``VerifierPool``), re-judges rule negatives with the optional generative judge
(``rollout.verifier.judge``, reason ``judge`` when it overturns one) and gives each trajectory its
caption's reward (Eq. 5); ``ThinkRule`` says how an unclosed ``<think>`` block is scored;
``judge_config`` is ``rollout.verifier.judge`` when it is on.

Why a module of its own: the verification and judging of one batch is a unit that can be read and
tested without the store, the shards and the provenance checks of the stage around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rollout.engine_api import FINISH_LENGTH
from rollout.prompts import THINK_CLOSE, THINK_OPEN

if TYPE_CHECKING:
    from rollout.config import RolloutConfig
    from rollout.inputs import InputRow


def judge_config(config: RolloutConfig) -> Any:
    """``rollout.verifier.judge`` when it is on (a plain ``VerifierConfig`` has none), else None."""
    judge = getattr(config.verifier, "judge", None)
    return judge if judge is not None and judge.enabled else None


@dataclass(frozen=True)
class ThinkRule:
    """How an unclosed think block is scored: ``mode`` zero | score; which routes' templates open one."""

    mode: str
    opens_think: dict[str, bool]

    def response(self, trajectory: dict) -> str:
        """The text to verify: the template's opening tag restored, or (``score``) an unclosed one dropped."""
        text = trajectory["text"]
        if THINK_CLOSE in text:
            return text
        if self.mode == "score":
            return text.replace(THINK_OPEN, "", 1)
        opened = self.opens_think.get(trajectory.get("route") or "easy", False)
        return text if THINK_OPEN in text or not opened else f"{THINK_OPEN}\n{text}"


def score_captions(groups: list[list[dict]], rows_by_id: dict[str, InputRow], pool: Any,
                    think: ThinkRule, judge: Any = None) -> list[dict]:
    """Score rows of whole caption groups; with the judge, rule negatives re-judged (reason ``judge``).
    A group with a failed judge request is left out under ``on_error: fail`` (the next run asks again)."""
    from rollout.rewards import caption_reward

    flat = [trajectory for group in groups for trajectory in group]
    items = [{"response": think.response(t), "answer": rows_by_id[t["id"]].answer,
              "choices": rows_by_id[t["id"]].extra.get("choices"), "question": rows_by_id[t["id"]].question,
              "truncated": t["finish_reason"] == FINISH_LENGTH} for t in flat]
    verified = pool.verify_batch(items)
    withheld: set[tuple[str, int]] = set()
    if judge is not None:
        verified = judge.rejudge(items, verified)
        if judge.settings.on_error == "fail":
            withheld = {(flat[index]["id"], flat[index]["k"]) for index in judge.last_failed}
    results = iter(verified)
    rows = []
    for group in groups:
        verdicts = [next(results) for _ in group]
        if (group[0]["id"], group[0]["k"]) in withheld:
            continue
        reward = caption_reward([verdict.correct for verdict in verdicts])
        rows += [{"id": t["id"], "k": t["k"], "n": t["n"], "correct": verdict.correct,
                  "extracted": verdict.extracted, "reason": verdict.reason,
                  "truncated": t["finish_reason"] == FINISH_LENGTH, "caption_reward": reward,
                  "num_tokens": t["num_tokens"]} for t, verdict in zip(group, verdicts, strict=True)]
    return rows
