"""Requests and settings: composite images, content keys, --benchmarks parsing, the eval: section."""

from __future__ import annotations

import io
from dataclasses import replace

import pytest
from PIL import Image

from evaluation.config import load_config
from evaluation.formats import Question
from evaluation.requests import LABEL_HEIGHT, compose, generation_key, messages, request_image
from evaluation.run import parse_benchmarks
from sophia_common.cli import UserError
from sophia_common.config import ConfigError
from sophia_tools.eval_cli import main as eval_main
from sophia_tools.tiny.benchmarks import png
from tests.multirank import REPO


def question(images=(), text="q") -> Question:
    return Question(benchmark="b", id="1", text=text, question=text, answers=("1",), choices=None, category="all",
                    images=tuple(images), judged=False, location="t")


def test_multi_image_questions_become_one_labelled_composite():
    """Two 64 px images side by side under their labels; a single image is passed through untouched."""
    red, blue = png("red"), png("blue")
    composite = Image.open(io.BytesIO(compose((red, blue), side=448)))
    assert composite.size == (2 * 64 + 8, 64 + LABEL_HEIGHT)
    assert composite.getpixel((32, LABEL_HEIGHT + 32))[0] > 200  # red left
    assert composite.getpixel((64 + 8 + 32, LABEL_HEIGHT + 32))[2] > 200  # blue right
    four = Image.open(io.BytesIO(compose((red,) * 4, side=32)))
    assert four.size == (3 * 32 + 2 * 8, 2 * (32 + LABEL_HEIGHT) + 8)  # 3 per row, images shrunk to 32
    assert request_image(question([red]), 448) == red
    assert request_image(question(), 448) is None


def test_system_prompt_then_question():
    assert messages(question(text="Hint\nQ"), "think") == ({"role": "system", "content": "think"},
                                                           {"role": "user", "content": "Hint\nQ"})
    assert messages(question(), "") == ({"role": "user", "content": "q"},)


def test_generation_key_follows_the_content():
    """Equal inputs give equal keys; another image, prompt or setting gives another key."""
    base = question([png("red")])
    turns = messages(base, "s")
    key = generation_key(base, turns, {"max_tokens": 16})
    assert key == generation_key(question([png("red")]), messages(base, "s"), {"max_tokens": 16})
    assert key != generation_key(replace(base, images=(png("blue"),)), turns, {"max_tokens": 16})
    assert key != generation_key(base, messages(base, "other"), {"max_tokens": 16})
    assert key != generation_key(base, turns, {"max_tokens": 17})


def test_parse_benchmarks():
    specs = parse_benchmarks(["mmmu=/d/MMMU,vista:mathvista=/d/v.parquet", "generic:jsonl=q.jsonl"])
    assert [(s.name, s.format, str(s.path)) for s in specs] == [
        ("mmmu", "mmmu", "/d/MMMU"), ("vista", "mathvista", "/d/v.parquet"), ("generic", "jsonl", "q.jsonl")]
    with pytest.raises(UserError, match="unknown format 'mathvistaa'"):
        parse_benchmarks("mathvistaa=/d")
    with pytest.raises(UserError, match="is not NAME"):
        parse_benchmarks("mathvista")
    with pytest.raises(UserError, match="distinct names"):
        parse_benchmarks("mmmu=/a,mmmu=/b")


def test_eval_section_defaults_are_the_paper_protocol_and_bad_keys_are_named():
    config = load_config(None)
    assert (config.policy.temperature, config.policy.top_p, config.policy.max_tokens) == (1.0, 0.8, 16384)
    assert config.samples == 1 and config.response_hint and config.system_prompt.endswith("slow_thinking_system.txt")
    with pytest.raises(ConfigError, match=r"unknown key 'eval.policy.max_token' \(did you mean 'max_tokens'\?\)"):
        load_config(REPO / "configs" / "tiny.yaml", ["policy.max_token=3"])
    with pytest.raises(ConfigError, match="need llm.base_url"):
        load_config(None, ["extract=llm"])
    with pytest.raises(ConfigError, match="samples=1"):
        load_config(None, ["policy.temperature=0", "samples=4"])


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert eval_main(["run", "--model", str(tmp_path), "--benchmarks", "nope=/x", "--out", str(tmp_path)]) == 2
    assert "unknown format 'nope'" in capsys.readouterr().err
    assert eval_main(["run", "--model", str(tmp_path), "--benchmarks", f"generic:jsonl={tmp_path}/absent.jsonl",
                      "--out", str(tmp_path / "o")]) == 2
    assert "absent.jsonl: no such benchmark file" in capsys.readouterr().err


def test_imports_are_light():
    """sophia-eval --help, formats, report and compare never load torch, vLLM or transformers."""
    import json
    import subprocess
    import sys

    from tests.multirank import subprocess_env

    code = ("import sys, json, evaluation.run, evaluation.cli, sophia_tools.eval_cli, sophia_tools.tiny.benchmarks\n"
            "heavy = ('torch', 'vllm', 'transformers', 'matplotlib', 'sympy')\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("recipe", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_eval_section_loads(recipe):
    """Each shipped recipe has an eval: section that validates, with the paper's sampling on GPU recipes."""
    config = load_config(recipe)
    assert (config.policy.temperature, config.policy.top_p) == (1.0, 0.8)
    if recipe.stem != "tiny":
        assert config.policy.engine == "vllm" and config.policy.max_tokens == 16384
