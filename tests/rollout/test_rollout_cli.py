"""What a user of ``sophia-rollout`` sees: per-stage help, results on stdout and logs on stderr, input
rejects with examples on the console, progress lines in batch logs, and one rule for recipe paths."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.multirank import REPO, subprocess_env


def _run(*args: str, cwd=REPO, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=subprocess_env(**env), capture_output=True,
                          text=True, timeout=300)


def test_every_stage_has_its_own_help_with_the_override_syntax(capsys):
    """Old behaviour: every stage showed the module's first line and no word on key=value or lists."""
    from rollout import pipeline

    texts = {}
    for stage in ("caption", "reason", "score", "select", "run", "stats", "merge"):
        with pytest.raises(SystemExit):
            pipeline._parse(stage, ["--help"])
        texts[stage] = " ".join(capsys.readouterr().out.split())
        assert "rollout.inputs=[a.jsonl,b.parquet]" in texts[stage] and "key=value" in texts[stage]
        assert "DESIGN" not in texts[stage]
    descriptions = {stage: text.split("options:")[0].split("]", 1)[-1] for stage, text in texts.items()}
    assert len(set(descriptions.values())) == len(descriptions)
    assert "K captions" in descriptions["caption"] and "run `sophia-rollout caption`" not in descriptions["caption"]
    assert "Needs the captions of `sophia-rollout caption`" in descriptions["reason"]


def test_results_go_to_stdout_and_everything_else_to_stderr():
    """Old behaviour: vLLM's log handler (bound to stdout) and child processes mixed logs into the JSON."""
    code = ("import logging, os, subprocess, sys\n"
            "from sophia_common.log import results_stdout\n"
            "handler = logging.StreamHandler(sys.stdout)\n"  # what vLLM's logging config does
            "with results_stdout() as results:\n"
            "    print('print noise')\n"
            "    logging.getLogger('lib').addHandler(handler); logging.getLogger('lib').warning('library log')\n"
            "    subprocess.run(['echo', 'child noise'], check=True)\n"
            "    print('{\"written\": 1}', file=results)\n"
            "print('after')\n")
    done = _run("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout == '{"written": 1}\nafter\n'
    assert "print noise" in done.stderr and "library log" in done.stderr and "child noise" in done.stderr


def test_progress_shows_as_lines_in_a_batch_log(tmp_path):
    """Old behaviour: without a terminal the bar was off unless an undocumented SOPHIA_PROGRESS=1 was set."""
    code = ("from sophia_common.log import progress\n"
            "for _ in progress(range(5), desc='tokenise a.jsonl', unit='sample'): pass\n")
    done = _run("-c", code, SOPHIA_PROGRESS_SECONDS="0")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "tokenise a.jsonl" in line]
    assert len(lines) == 5 and "tokenise a.jsonl: 5/5 sample (100%" in lines[-1]
    assert _run("-c", code, SOPHIA_PROGRESS="off", SOPHIA_PROGRESS_SECONDS="0").stderr == ""


def test_input_rejects_are_shown_with_examples_and_results_stay_json(tiny_root, tmp_path):
    """Old behaviour: rejected input rows went to a parquet table only; the console showed a count."""
    rows = [{"id": f"noanswer{i}", "image": "x.png", "question": "How many?"} for i in range(4)]
    rows.append({"id": "noquestion", "image": "x.png", "question": " ", "answer": "2"})
    (tmp_path / "inputs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({"rollout": {
        "inputs": ["inputs.jsonl"], "store_dir": "store",
        "captioner": {"model": str(tiny_root["vit300m_qwen2_hf"]), "engine": "transformers", "K": 1}}}))
    done = _run("-m", "sophia_tools.rollout_cli", "caption", "--config", "recipe.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (report,) = [json.loads(line) for line in done.stdout.splitlines()]  # stdout: results only
    assert report["stage"] == "caption" and report["wanted"] == 0
    assert "5 input row(s) rejected" in done.stderr
    assert "missing_answer: 4, e.g. noanswer0: inputs.jsonl line 1: gold answer is None" in done.stderr
    assert "noanswer2" in done.stderr and "noanswer3" not in done.stderr  # the first few, not all
    assert "empty_question: 1, e.g. noquestion" in done.stderr
    assert (tmp_path / "store" / "rejects").is_dir()  # paths relative to the working directory


def test_recipe_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    """One rule: prompt files too (they used to be read relative to the recipe file, other paths not)."""
    from rollout.config import load_config
    from rollout.prompts import Prompts

    (tmp_path / "recipes").mkdir()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "caption.txt").write_text("Describe it, working-directory edition.")
    (tmp_path / "recipes" / "mine").mkdir()
    (tmp_path / "recipes" / "mine" / "caption.txt").write_text("Describe it, recipe-directory edition.")
    recipe = tmp_path / "recipes" / "r.yaml"
    recipe.write_text(json.dumps({"rollout": {"inputs": ["data.jsonl"], "store_dir": "store",
                                              "prompts": {"caption": "mine/caption.txt"}}}))
    monkeypatch.chdir(tmp_path)
    config = load_config(recipe)
    assert Prompts.load(config.prompts).caption == "Describe it, working-directory edition."
    shipped = (REPO / "configs" / "prompts" / "simulated_seeing.txt").read_text(encoding="utf-8").strip()
    assert Prompts.load(config.prompts).simulated_seeing == shipped  # a default absent here: the shipped one
    assert config.store_path.resolve() == (tmp_path / "store").resolve()
