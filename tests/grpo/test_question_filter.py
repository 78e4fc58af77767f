"""``sophia-rollout filter``: the pass-rate band, rejects with reasons, resumption, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from rollout.engine_api import Completion, Failure
from rollout.question_filter import FilterSection, filter_questions, progress_path
from rollout.verifier import verify_batch
from tests.multirank import REPO, subprocess_env

# question id -> how many of its 8 samples answer right (None: the engine cannot serve it)
SCRIPT = {"easy": 8, "half": 4, "edge": 3, "hard": 0, "broken": None}


class ScriptedEngine:
    """Stands in for the policy's engine (a tiny model would pass nothing): answers each question right
    ``SCRIPT[id]`` times out of n; counts the requests it serves."""

    def __init__(self) -> None:
        self.served: list[str] = []

    def generate(self, requests, params):
        out = []
        for request in requests:
            self.served.append(request.key)
            right = SCRIPT[request.key]
            if right is None:
                out.append(Failure("unreadable_image", "scripted"))
                continue
            out.append([Completion(f"\\boxed{{{'7' if i < right else '9'}}}", 3, "stop") for i in range(params.n)])
        return out


class Generator:
    temperature, top_p, max_tokens, seed = 1.0, 1.0, 16, 0


def write_inputs(tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(b"not decoded by the scripted engine")
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"id": q, "image": "x.png", "question": "q?", "answer": "7"}) + "\n"
                            for q in SCRIPT))
    return path


def test_band_rejects_and_resume(tmp_path):
    settings = FilterSection(inputs=[str(write_inputs(tmp_path))], out=str(tmp_path / "kept.jsonl"), samples=8,
                             min_pass_rate=0.4, max_pass_rate=0.6)
    engine = ScriptedEngine()
    report = filter_questions(settings, engine, Generator(), verify_batch)
    kept = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert [(k["id"], k["pass_rate"]) for k in kept] == [("half", 0.5)]  # 3/8 = 0.375 < 0.4: out
    assert report["kept"] == 1 and report["rejects"] == {"too_easy": 1, "too_hard": 2, "unreadable_image": 1}
    # A rerun decides nothing again; a killed run (last record cut) resamples only what is missing.
    again = ScriptedEngine()
    assert filter_questions(settings, again, Generator(), verify_batch) == report and again.served == []
    progress = progress_path(tmp_path / "kept.jsonl")
    lines = progress.read_text().splitlines()
    progress.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
    resumed = ScriptedEngine()
    assert filter_questions(settings, resumed, Generator(), verify_batch) == report
    assert resumed.served == list(SCRIPT)[2:]


def test_cli_needs_the_grpo_sections(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"grpo": {"questions": "x"}}))
    proc = subprocess.run([sys.executable, "-m", "sophia_tools.rollout_cli", "filter", "--config", str(recipe)],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "grpo.filter and grpo.generator" in proc.stderr
