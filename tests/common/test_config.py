"""Recipes: typed sections, dotted overrides, one clear error per bad key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from sophia_common.config import ConfigError, build, doc, field_docs, parse_overrides, read_recipe


@dataclass
class Optim:
    lr: float = doc("peak learning rate", 2e-5)
    betas: list[float] = doc("Adam betas", [0.9, 0.95])


@dataclass
class Train:
    mode: Literal["sft", "sophia"] = doc("what to train", "sophia")
    steps: int = doc("optimizer steps", 10)
    optim: Optim = doc("optimizer", default=None)
    save_dir: str | None = doc("where checkpoints go", None)

    def __post_init__(self):
        if self.optim is None:
            self.optim = Optim()
        if self.steps <= 0:
            raise ValueError("steps must be positive")


def test_yaml_and_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  mode: sft\n  steps: 5\n  optim:\n    lr: 1e-4\n")
    raw = read_recipe(recipe, ["train.steps=7", "train.optim.betas=[0.8,0.9]", "train.save_dir=/x"])
    train = build(Train, raw["train"], "train")
    assert (train.mode, train.steps, train.optim.lr, train.optim.betas, train.save_dir) == \
        ("sft", 7, 1e-4, [0.8, 0.9], "/x")


def test_every_bad_key_reported_at_once():
    with pytest.raises(ConfigError) as err:
        build(Train, {"mdoe": "sft", "steps": "many", "optim": {"lrr": 1}}, "train")
    lines = str(err.value).splitlines()
    assert "unknown key 'train.mdoe' (did you mean 'mode'?)" in lines
    assert any("'train.steps': expected int" in line for line in lines)
    assert "unknown key 'train.optim.lrr' (did you mean 'lr'?)" in lines


def test_literal_and_validation_errors():
    with pytest.raises(ConfigError, match="'train.mode': 'rl' is not one of"):
        build(Train, {"mode": "rl"}, "train")
    with pytest.raises(ConfigError, match="steps must be positive"):
        build(Train, {"steps": 0}, "train")


def test_unknown_section_and_bad_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("trian: {}\n")
    with pytest.raises(ConfigError, match="unknown section 'trian' \\(did you mean 'train'\\?\\)"):
        read_recipe(recipe)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.steps"])
    with pytest.raises(ConfigError, match="not found"):
        read_recipe(tmp_path / "missing.yaml")


def test_field_docs_cover_nested():
    docs = field_docs(Train)
    assert docs["optim.lr"] == "peak learning rate" and docs["mode"] == "what to train"


def test_a_list_given_as_a_scalar_shows_the_list_syntax():
    """Old behaviour: "expected a list, got 'a.jsonl'" without saying how a list is written."""
    raw = read_recipe(None, ["train.optim.betas=0.9"])
    with pytest.raises(ConfigError, match=r"'train.optim.betas': expected a list, got 0.9; write a list as "
                                          r"train.optim.betas=\[a,b\] on the command line"):
        build(Train, raw["train"], "train")


def test_a_recipe_that_is_not_utf8_names_the_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"train:\n  mode: sft\n  save_dir: /caf\xe9\n")
    with pytest.raises(ConfigError, match=r"r.yaml, line 3: not UTF-8 \(byte 0xe9\)"):
        read_recipe(recipe)


def test_overrides_help_documents_dotted_keys_and_lists():
    from sophia_common.config import OVERRIDES_HELP

    text = OVERRIDES_HELP.format(example="rollout.N=4")
    assert "rollout.N=4" in text and "[a,b]" in text and "null" in text
    assert "relative to the directory the command runs in" in " ".join(text.split())
