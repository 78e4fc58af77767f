"""The tables of one benchmark's store and the plan of one benchmark in a run (shared by run and report).

``responses`` keyed (key, sample): the model's text, token count and finish reason; ``scores``
keyed (key, sample, scorer): extracted answer, verdict, reason and method under one scorer
fingerprint; ``rejects`` (stage ``generate``, id = key, k = sample): requests the engine could not
serve. ``key`` is the content key of ``evaluation.requests.generation_key``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from evaluation.formats import Question
from rollout.store import Store

RESPONSES, SCORES, GENERATE = "responses", "scores", "generate"
RESPONSE_KEYS, SCORE_KEYS = ("key", "sample"), ("key", "sample", "scorer")
RESPONSE_SCHEMA = pa.schema([("key", pa.string()), ("sample", pa.int64()), ("id", pa.string()),
                             ("text", pa.string()), ("num_tokens", pa.int64()), ("finish_reason", pa.string())])
SCORE_SCHEMA = pa.schema([("key", pa.string()), ("sample", pa.int64()), ("scorer", pa.string()),
                          ("id", pa.string()), ("extracted", pa.string()), ("correct", pa.bool_()),
                          ("reason", pa.string()), ("method", pa.string())])


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    format: str
    path: Path


@dataclass
class Plan:
    """One benchmark of the run: its questions, their generation keys and its store."""

    spec: BenchmarkSpec
    questions: list[Question]
    turns: list[tuple[dict[str, str], ...]]
    keys: list[str]
    store: Store
    draw_keys: list[str] = field(default_factory=list)  # per-request seeds: the keys without the model
    samples: int = 1
    generated: int = 0
    scored: int = 0

    @property
    def directory(self) -> Path:
        return self.store.root.parent


def read_table(store: Store, name: str, key_columns: tuple[str, ...]) -> list[dict[str, Any]]:
    table = store.table(name, key_columns)
    return table.read().to_pylist() if table.shard_paths() else []
