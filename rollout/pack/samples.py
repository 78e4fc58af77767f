"""The sample types the pack modules pass along: a usable source row, and that row tokenised.

Kept apart from ``build`` (which makes them) and ``write`` (which stores them), so the pack
modules import one way: ``build`` -> ``write`` -> ``samples`` -> ``render``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rollout.inputs import InputRow
from rollout.pack.render import TokenizedSample


@dataclass(frozen=True)
class SampleRecord:
    """A usable row of a source: what to render, with which reward weight, under which source label."""

    row: InputRow
    response: str
    weight: float
    label: str
    """``sample_sources`` entry: ``kind/source`` (``kind`` alone when the row names no source)."""

    @property
    def images(self) -> tuple[Path | bytes, ...]:
        return () if self.row.image is None else (self.row.image,)


@dataclass(frozen=True)
class Sample:
    """A selected, tokenised sample; ``source`` indexes ``PackConfig.sources``."""

    record: SampleRecord
    tokens: TokenizedSample
    source: int
