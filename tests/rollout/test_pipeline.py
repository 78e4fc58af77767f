"""The rollout stages end to end on tiny models: keys, rejects, resumption, sharding + merge, stats, export.

Fast tests caption with the Transformers InternVL engine and reason with the Transformers text engine;
one slow test reasons with vLLM (CPU) through the command line in a subprocess. Tiny random models
answer nothing correctly, so Eq. 6 selects nothing here; selection itself is tested on a hand-built
store in test_rewards.py, and the ``random`` ablation (which ignores rewards) exercises the export.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys

import pyarrow as pa
import pytest
from PIL import Image

from rollout.config import load_config
from rollout.pipeline import Invocation, merge_main, run_main, run_stages, stats_main
from rollout.sharding import Shard
from rollout.stages import CAPTIONS, DECISIONS, SCORES, SELECTED, TRAJECTORIES, read_rows
from rollout.store import Store
from tests.multirank import REPO, subprocess_env

K, N = 2, 2
GOOD = ("red", "green_b64", "blue_tall")


def _png(size, colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_root):
    root = tmp_path_factory.mktemp("rollout")
    (root / "red.png").write_bytes(_png((300, 200), (220, 20, 20)))
    (root / "blue.png").write_bytes(_png((150, 500), (20, 20, 220)))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    rows = [
        {"id": "red", "image": "red.png", "question": "<image>\nHow many red squares?", "answer": "1",
         "source": "synthetic", "difficulty": "easy"},
        {"id": "green_b64", "image_b64": base64.b64encode(_png((64, 64), (0, 200, 0))).decode(),
         "question": "What colour is the image?", "answer": "green", "source": "synthetic"},
        {"id": "blue_tall", "image": "blue.png", "question": "Is it taller than wide?", "answer": "yes",
         "source": "synthetic", "difficulty": "hard"},
        {"id": "broken", "image": "broken.png", "question": "What is shown?", "answer": "nothing"},
        {"id": "no_answer", "image": "red.png", "question": "What is shown?"},
        {"id": "empty_question", "image": "red.png", "question": "  ", "answer": "1"},
    ]
    (root / "inputs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    engine = {"engine": "transformers", "dtype": "float32", "max_tokens": 10}
    recipe = {"rollout": {
        "inputs": [str(root / "inputs.jsonl")], "store_dir": str(root / "store"), "N": N, "batch_size": 2,
        "captioner": {"model": str(tiny_root["vit300m_qwen2_hf"]), "K": K, "max_tiles": 2, **engine},
        "reasoner": {"easy": {"model": str(tiny_root["reasoner"]), **engine},
                     "hard": {"model": str(tiny_root["reasoner"]), **engine, "seed": 7}},
        "verifier": {"timeout_s": 2.0, "workers": 1}}}
    (root / "recipe.yaml").write_text(json.dumps(recipe))  # JSON is YAML
    return root


def _keys(store_dir, table, columns=("id", "k", "n")) -> list[tuple]:
    return sorted(tuple(row[name] for name in columns) for row in read_rows(Store(store_dir), table, list(columns)))


def _shard_files(store_dir) -> dict[str, float]:
    return {str(path.relative_to(store_dir)): path.stat().st_mtime_ns for path in store_dir.rglob("part-*.parquet")}


@pytest.fixture(scope="module")
def full_run(workspace):
    """The unsharded run (done once; several tests read its store)."""
    assert run_main(["--config", str(workspace / "recipe.yaml")]) == 0
    return workspace / "store"


def test_every_key_once_and_rejects_by_reason(full_run):
    captions = [(item, k) for item in GOOD for k in range(K)]
    trajectories = sorted((item, k, n) for item, k in captions for n in range(N))
    assert _keys(full_run, CAPTIONS, ("id", "k")) == sorted(captions)
    assert _keys(full_run, TRAJECTORIES) == trajectories
    assert _keys(full_run, SCORES) == trajectories
    assert _keys(full_run, DECISIONS, ("id",)) == sorted((item,) for item in GOOD)
    store = Store(full_run)
    assert store.reject_counts("input") == {"missing_answer": 1, "empty_question": 1}
    assert store.reject_counts("caption") == {"unreadable_image": K}  # one per wanted caption of "broken"
    routes = {row["id"]: row["route"] for row in read_rows(store, TRAJECTORIES, ["id", "route"])}
    assert routes == {"red": "easy", "green_b64": "easy", "blue_tall": "hard"}
    for row in read_rows(store, SCORES, ["correct", "reason", "truncated", "caption_reward", "num_tokens"]):
        assert row["truncated"] == (row["reason"] == "truncated") and row["caption_reward"] == 0.0
        assert not row["correct"] and 1 <= row["num_tokens"] <= 10


def test_rerun_recomputes_nothing(full_run, workspace, capsys):
    before = _shard_files(full_run)
    capsys.readouterr()
    assert run_main(["--config", str(workspace / "recipe.yaml")]) == 0
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [report["written"] for report in reports] == [0, 0, 0, 0]
    assert all(report["already_done"] == report["wanted"] for report in reports)
    assert _shard_files(full_run) == before


def test_a_resumed_run_does_only_the_missing_work(full_run, workspace, capsys):
    store = workspace / "resumed"  # as if killed during the reason stage, after its first shard
    shutil.copytree(full_run, store, ignore=shutil.ignore_patterns(SCORES, DECISIONS, SELECTED, "selected.*"))
    shards = sorted((store / TRAJECTORIES).glob("part-*.parquet"))
    assert len(shards) == 3
    for shard in shards[1:]:
        shard.unlink()
    kept = len(_keys(store, TRAJECTORIES))
    capsys.readouterr()
    assert run_main(["--config", str(workspace / "recipe.yaml"), f"rollout.store_dir={store}"]) == 0
    caption, reason, score, _ = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (caption["written"], reason["already_done"], reason["written"]) == (0, kept, len(GOOD) * K * N - kept)
    assert score["written"] == len(GOOD) * K * N
    columns = ("id", "k", "n", "text")
    assert _keys(store, TRAJECTORIES, columns) == _keys(full_run, TRAJECTORIES, columns)  # seeded per key


@pytest.fixture(scope="module")
def shard_stores(workspace):
    """The same run as two array tasks of two, each with its own store."""
    stores = [workspace / f"shard{index}" for index in range(2)]
    for index, store in enumerate(stores):
        assert run_main(["--config", str(workspace / "recipe.yaml"), "--shard", f"{index}/2",
                         f"rollout.store_dir={store}"]) == 0
    return stores


def test_shards_and_merge_equal_the_unsharded_run(full_run, shard_stores, workspace, capsys):
    assert {item for store in shard_stores for (item,) in _keys(store, DECISIONS, ("id",))} == set(GOOD)
    assert all(_keys(store, DECISIONS, ("id",)) for store in shard_stores)  # both tasks had work
    assert not (shard_stores[0] / "selected.parquet").exists()  # a sharded select does not export
    capsys.readouterr()
    merged = workspace / "merged"
    assert merge_main(["--config", str(workspace / "recipe.yaml"), "--sources", *map(str, shard_stores),
                       "--dest", str(merged)]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][TRAJECTORIES] == len(GOOD) * K * N
    for table, columns in ((CAPTIONS, ("id", "k", "text")), (TRAJECTORIES, ("id", "k", "n", "text")),
                           (SCORES, ("id", "k", "n", "reason")), (DECISIONS, ("id", "selected"))):
        assert _keys(merged, table, columns) == _keys(full_run, table, columns)  # same keys, same samples
    assert Store(merged).reject_counts() == Store(full_run).reject_counts()


def test_merge_refuses_a_missing_shard(shard_stores, workspace):
    from rollout.store import StoreError

    with pytest.raises(StoreError, match="neither stored nor rejected"):
        merge_main(["--config", str(workspace / "recipe.yaml"), "--sources", str(shard_stores[0]),
                    "--dest", str(workspace / "half-merge")])
    assert not (workspace / "half-merge").exists()


def test_stats_writes_json_and_png(full_run, workspace, capsys):
    out = workspace / "stats"
    assert stats_main(["--config", str(workspace / "recipe.yaml"), "--out", str(out)]) == 0
    report = json.loads((out / "stats.json").read_text())
    assert (out / "lengths.png").read_bytes()[:4] == b"\x89PNG"
    counts = report["counts"]
    assert (counts["captions"], counts["trajectories"], counts["scores"]) == (6, 12, 12)
    assert (counts["input_rows"], counts["input_rejects"], counts["correct"]) == (4, 2, 0)
    assert report["rejects"] == {"caption": {"unreadable_image": K}, "input": {"empty_question": 1,
                                                                              "missing_answer": 1}}
    assert report["caption_rewards"]["histogram"] == {"0": 6}
    assert report["question_pass_rate"]["share_of_questions_selected"] == 0.0
    assert report["lengths"]["trajectories"]["count"] == 12
    provenance = report["provenance"]
    assert provenance["captions"]["K"] == K and provenance["trajectories"]["N"] == N
    assert provenance["captions"]["captioner"]["model"]["weights"].startswith("sha256:")
    assert json.loads(capsys.readouterr().out)["counts"] == counts


def test_random_ablation_selects_and_exports_real_trajectories(full_run, workspace):
    from rollout.inputs import read_inputs

    store = workspace / "ablation"
    shutil.copytree(full_run, store, ignore=shutil.ignore_patterns(SELECTED, DECISIONS, "selected.*"))
    # The tiny reasoner is cut at max_tokens nearly always; mark only n = 0 as finished, so the
    # draw must come from those (a cut-off trajectory is never drawn, even with rewards ignored).
    scores = Store(store).table(SCORES).read()
    for shard in (store / SCORES).glob("part-*.parquet"):
        shard.unlink()
    finished = [row["n"] == 0 for row in scores.to_pylist()]
    Store(store).table(SCORES).write(scores.set_column(scores.schema.get_field_index("truncated"), "truncated",
                                                       pa.array([not value for value in finished])))
    out = workspace / "ablation.jsonl"
    invocation = Invocation(load_config(workspace / "recipe.yaml", [f"store_dir={store}", "ablation=random",
                                                                     f"selected_out={out}"]),
                            workspace / "recipe.yaml", Shard(), args=None)
    (report,) = run_stages(["select"], invocation)
    assert report.written == len(GOOD) and report.extra["exported"] == len(GOOD)
    samples = read_inputs(out, require=("image",), extra_columns=("response", "weight", "question_id"))
    assert sorted(row.extra["question_id"] for row in samples.rows) == sorted(GOOD)
    assert all(row.id.endswith("n0") for row in samples.rows)
    assert all(row.extra["weight"] == 1.0 and row.image_bytes()[:4] == b"\x89PNG" for row in samples.rows)
    texts = {row["text"] for row in read_rows(Store(full_run), TRAJECTORIES, ["text"])}
    assert {row.extra["response"] for row in samples.rows} <= texts


def test_an_engine_error_rejects_only_its_request(workspace):
    from rollout.engines import make_engine

    def flaky_factory(config, role, **options):
        engine = make_engine(config, role, **options)
        generate = engine.generate

        def failing_on_blue(requests, params):
            if any("blue_tall" in request.key for request in requests):
                raise RuntimeError("simulated engine failure")
            return generate(requests, params)

        engine.generate = failing_on_blue
        return engine

    config = load_config(workspace / "recipe.yaml", [f"store_dir={workspace / 'flaky'}"])
    run_stages(["caption"], Invocation(config, workspace / "recipe.yaml", Shard(), args=None),
               engine_factory=flaky_factory)
    store = Store(workspace / "flaky")
    assert store.reject_counts("caption") == {"engine_error": K, "unreadable_image": K}
    assert _keys(workspace / "flaky", CAPTIONS, ("id",)) == sorted((item,) for item in GOOD if item != "blue_tall"
                                                                    for _ in range(K))


@pytest.mark.slow
def test_run_with_the_vllm_reasoner(workspace, tiny_root):
    pytest.importorskip("vllm")
    store = workspace / "vllm-store"
    command = [sys.executable, "-m", "sophia_tools.rollout_cli", "run", "--config", str(workspace / "recipe.yaml"),
               f"rollout.store_dir={store}", "reasoner.hard=null", "reasoner.easy.engine=vllm",
               "reasoner.easy.dtype=bfloat16", "reasoner.easy.enforce_eager=true", "reasoner.easy.max_model_len=1024",
               "reasoner.easy.max_num_seqs=16", "reasoner.easy.max_tokens=24"]
    env = subprocess_env(VLLM_CPU_KVCACHE_SPACE="1")
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    assert proc.returncode == 0, proc.stderr[-5000:]
    trajectories = read_rows(Store(store), TRAJECTORIES, ["id", "k", "n", "num_tokens", "finish_reason", "route"])
    assert sorted((row["id"], row["k"], row["n"]) for row in trajectories) == \
        sorted((item, k, n) for item in GOOD for k in range(K) for n in range(N))
    assert all(row["route"] == "easy" and 1 <= row["num_tokens"] <= 24 for row in trajectories)
    assert _keys(store, SCORES) == _keys(store, TRAJECTORIES)
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and [json.loads(line)["written"] for line in again.stdout.splitlines()] == [0] * 4


def test_an_engine_error_is_retried_by_the_next_run(workspace):
    """Old behaviour: the rejected keys were skipped for good, so the rerun said already_done."""
    config = load_config(workspace / "recipe.yaml", [f"store_dir={workspace / 'flaky'}"])
    if not (workspace / "flaky").exists():
        test_an_engine_error_rejects_only_its_request(workspace)
    (report,) = run_stages(["caption"], Invocation(config, workspace / "recipe.yaml", Shard(), args=None))
    assert report.written == K and report.already_done == report.wanted - K  # only blue_tall's captions
    assert _keys(workspace / "flaky", CAPTIONS, ("id",)) == sorted((item,) for item in GOOD for _ in range(K))


def test_a_fixed_image_is_examined_again(workspace, tmp_path):
    """Old behaviour: after repairing a corrupt image the rerun skipped it as already rejected."""
    shutil.copy(workspace / "inputs.jsonl", tmp_path / "inputs.jsonl")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    for name in ("red.png", "blue.png"):
        shutil.copy(workspace / name, tmp_path / name)
    overrides = [f"store_dir={tmp_path / 'store'}", f"inputs=[{tmp_path / 'inputs.jsonl'}]"]
    invocation = Invocation(load_config(workspace / "recipe.yaml", overrides), workspace / "recipe.yaml",
                            Shard(), args=None)
    assert run_stages(["caption"], invocation)[0].rejected == K
    (tmp_path / "broken.png").write_bytes(_png((40, 30), (90, 90, 90)))  # repaired
    (again,) = run_stages(["caption"], invocation)
    assert (again.written, again.rejected) == (K, 0)
    assert ("broken",) in _keys(tmp_path / "store", CAPTIONS, ("id",))


def test_a_store_made_by_another_model_is_refused(full_run, workspace, tmp_path):
    """Old behaviour: another captioner or reasoner into the same store reported already_done and reused
    the old model's captions and trajectories."""
    from rollout.store import StoreError

    recipe = workspace / "recipe.yaml"
    captioner = tmp_path / "captioner-round2"  # the same model after a (pretend) training round
    shutil.copytree(load_config(recipe).captioner.model, captioner)
    weights = next(captioner.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # the first tensor's bytes, after the safetensors header
    data[start:start + 64] = bytes(value ^ 1 for value in data[start:start + 64])  # lowest bits: still floats
    weights.write_bytes(bytes(data))
    before = _shard_files(full_run)
    with pytest.raises(StoreError, match="(?s)table 'captions' .*captioner.model.weights: recorded \"sha256:.*"
                                         "now \"sha256:.*captioner-round2.*rollout.namespace=NAME"):
        run_main(["--config", str(recipe), f"captioner.model={captioner}"])
    with pytest.raises(StoreError, match=r"(?s)table 'trajectories' .*easy.sampling.temperature: recorded 1.0, "
                                         r"now 0.5"):
        run_main(["--config", str(recipe), "reasoner.easy.temperature=0.5"])
    assert _shard_files(full_run) == before  # nothing was written
    # asked for explicitly, the new model's results go to a namespace of their own
    shared = tmp_path / "shared"
    shutil.copytree(full_run, shared)
    invocation = Invocation(load_config(recipe, [f"store_dir={shared}", f"captioner.model={captioner}",
                                                 "namespace=round2"]), recipe, Shard(), args=None)
    (report,) = run_stages(["caption"], invocation)
    assert report.written == len(GOOD) * K
    assert _keys(shared / "namespaces" / "round2", CAPTIONS, ("id", "k")) == _keys(full_run, CAPTIONS, ("id", "k"))
    assert _shard_files(shared / CAPTIONS) == _shard_files(full_run / CAPTIONS)
