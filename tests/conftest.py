"""Shared pytest fixtures.

``tiny_root`` builds every tiny offline fixture once per session (a few seconds; see
``sophia_tools.tiny``) and returns ``build_all``'s ``{key: Path}`` dict. Set ``SOPHIA_TINY_DIR`` to
build into (and reuse across sessions) a fixed dir instead of a fresh temporary one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> dict[str, Path]:
    from sophia_tools.tiny import build_all

    root = os.environ.get("SOPHIA_TINY_DIR") or tmp_path_factory.mktemp("tiny")
    return build_all(root)
