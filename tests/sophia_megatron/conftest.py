"""A tiny training set-up built once per session: a converted InternVL and a packed dataset.

The packed dataset comes from the real builder (``sophia-rollout pack``) over synthetic
samples: image trajectories (some with ``<think>``), text-only samples, varied reward weights.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

WORDS = ("red blue green circle square triangle count two three four left right above below "
         "there are shapes the answer is").split()


def _png(seed: int) -> bytes:
    image = Image.new("RGB", (96, 96), ((seed * 37) % 256, (seed * 91) % 256, 120))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _sentence(seed: int, length: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(length))


def write_samples(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(12):
        image = directory / f"img{i}.png"
        image.write_bytes(_png(i))
        think = f"<think> {_sentence(i, 20)} </think> " if i % 3 == 0 else ""
        rows.append({"id": f"traj{i}", "image": image.name, "question": f"How many shapes? {_sentence(i, 6)}",
                     "response": f"{think}{_sentence(i + 1, 30)} The answer is \\boxed{{{i % 5}}}.",
                     "answer": str(i % 5), "source": "synthetic", "weight": [1.0, 0.5, 1.0, 0.75][i % 4]})
    path = directory / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = [{"id": f"text{i}", "question": f"Compute {i} plus {i}.", "response": f"{_sentence(i, 25)} "
             f"So the result is \\boxed{{{2 * i}}}.", "source": "math"} for i in range(6)]
    (directory / "text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in text))
    return path


@pytest.fixture(scope="session")
def tiny_training(tiny_root, tmp_path_factory):
    from conversion.convert import hf_to_mcore
    from rollout.pack.build import pack_main

    root = tmp_path_factory.mktemp("training")
    hf_to_mcore(tiny_root["vit300m_qwen2_hf"], root / "mcore", tp=1, pp=1)
    samples = write_samples(root / "samples")
    recipe = root / "pack.yaml"
    recipe.write_text(yaml.safe_dump({"pack": {
        "tokenizer_dir": str(root / "mcore" / "hf_files"), "max_seq_len": 1536, "packs_per_shard": 2,
        "max_tiles": 1, "out": str(root / "packed"),
        "sources": [{"path": str(samples), "kind": "trajectories", "weight": 1.0},
                    {"path": str(samples.parent / "text.jsonl"), "kind": "text", "weight": 1.0}]}}))
    assert pack_main(["--config", str(recipe)]) == 0
    return {"hf": tiny_root["vit300m_qwen2_hf"], "mcore": root / "mcore", "data": root / "packed", "root": root}
