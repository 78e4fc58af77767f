"""The rollout store: atomic keyed shards, duplicate refusal, rejects, merge, and a real kill -9 test."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from rollout.merge import merge
from rollout.store import REJECTS, TEMP_PREFIX, Store, StoreError, reject_record
from tests.multirank import REPO, subprocess_env
from tests.rollout.workers.store_writer import fake_caption

WORKER = REPO / "tests" / "rollout" / "workers" / "store_writer.py"


def caption_rows(ids, ks=(0, 1)):
    return [{"id": item_id, "k": k, "caption": f"{item_id}-{k}"} for item_id in ids for k in ks]


def keys_of(table: pa.Table, columns) -> list[tuple]:
    return list(zip(*(table.column(name).to_pylist() for name in columns)))


def test_write_read_existing_and_missing(tmp_path):
    captions = Store(tmp_path).table("captions")
    assert captions.existing_keys() == set() and len(captions) == 0
    assert captions.read().num_rows == 0
    first = captions.write(caption_rows(["a", "b"]))
    captions.write(pa.Table.from_pylist(caption_rows(["c"])))
    assert first.parent == tmp_path / "captions" and first.name.startswith("part-main-")
    assert captions.write([]) is None and len(captions.shard_paths()) == 2

    reopened = Store(tmp_path).table("captions")
    assert reopened.key_columns == ("id", "k")
    assert reopened.existing_keys() == {(i, k) for i in "abc" for k in (0, 1)}
    assert reopened.missing([("a", 0), ("z", 0), ["c", 2]]) == [("z", 0), ("c", 2)]
    table = reopened.read()
    assert sorted(keys_of(table, ("id", "k"))) == sorted(reopened.existing_keys())
    assert dict(zip(table["id"].to_pylist(), table["caption"].to_pylist()))["b"].startswith("b-")
    assert reopened.read(["id"]).column_names == ["id"]
    with pytest.raises(ValueError, match="keys are"):
        reopened.missing(["a"])


def test_duplicate_keys_are_refused_and_nothing_is_written(tmp_path):
    captions = Store(tmp_path).table("captions")
    captions.write(caption_rows(["a"]))
    with pytest.raises(StoreError, match=r"already holds keys \('a', 1\)"):
        captions.write(caption_rows(["b"]) + caption_rows(["a"], ks=[1]))
    with pytest.raises(StoreError, match="repeated within one write"):
        captions.write(caption_rows(["c"]) + caption_rows(["c"], ks=[0]))
    assert len(captions.shard_paths()) == 1
    # a second process (or a rerun that forgot to skip) sees the other shards too
    with pytest.raises(StoreError, match="already holds"):
        Store(tmp_path, writer="other").table("captions").write(caption_rows(["a"], ks=[0]))
    written = captions.write(caption_rows(["a", "b"]), skip_existing=True)
    assert written is not None and len(captions) == 4
    assert captions.write(caption_rows(["a"]), skip_existing=True) is None


def test_rows_must_fit_the_table(tmp_path):
    store = Store(tmp_path)
    captions = store.table("captions")
    with pytest.raises(StoreError, match="key column 'k' is missing"):
        captions.write([{"id": "a", "caption": "x"}])
    with pytest.raises(StoreError, match="null values"):
        captions.write([{"id": "a", "k": None, "caption": "x"}])
    captions.write(caption_rows(["a"]))
    with pytest.raises(StoreError, match=r"unexpected \['extra'\]"):
        captions.write([{"id": "b", "k": 0, "caption": "x", "extra": 1}])
    with pytest.raises(StoreError, match="column types"):
        captions.write([{"id": "b", "k": 0, "caption": [1, 2]}])
    with pytest.raises(StoreError, match="keyed by"):
        Store(tmp_path).table("captions", ("id",))
    with pytest.raises(StoreError, match="no default key columns"):
        store.table("selected")
    assert store.table("selected", ("id",)).key_columns == ("id",)
    with pytest.raises(StoreError, match="writer tag"):
        Store(tmp_path, writer="a-b")


def test_rejects_are_counted_by_reason_and_skippable(tmp_path):
    store = Store(tmp_path)
    store.write_rejects([
        reject_record("a", "input", "missing_answer", "line 1", input_hash="ha"),
        reject_record("b", "caption", "unreadable_image", "truncated file", k=0, input_hash="hb"),
        reject_record("b", "caption", "unreadable_image", "truncated file", k=1, input_hash="hb"),
        reject_record("c", "reason", "engine_error", k=0, n=3, input_hash="hc"),
    ])
    assert Store(tmp_path).reject_counts() == {"unreadable_image": 2, "engine_error": 1, "missing_answer": 1}
    assert store.reject_counts("caption") == {"unreadable_image": 2}
    assert store.rejected_keys("caption", ("id", "k")) == {("b", 0), ("b", 1)}
    assert store.rejected_keys("input") == {("a",)}
    assert store.rejects.existing_keys() >= {("input", "a", None, None, "ha", "missing_answer"),
                                             ("reason", "c", 0, 3, "hc", "engine_error")}
    with pytest.raises(StoreError, match="already holds"):
        store.write_rejects([reject_record("a", "input", "missing_answer", input_hash="ha")])
    assert store.write_rejects([reject_record("a", "input", "missing_answer", input_hash="ha")],
                               skip_existing=True) is None
    assert store.rejects.read().schema.field("k").type == pa.int64()


def test_transient_rejects_are_retried_and_changed_rows_reexamined(tmp_path):
    """Old behaviour: every reject was skipped for good, so a fixed image or an engine hiccup never came back."""
    store = Store(tmp_path)
    store.write_rejects([reject_record("c", "reason", "engine_error", k=0, n=3, input_hash="hc"),
                         reject_record("d", "reason", "timeout", k=0, n=0, input_hash="hd"),
                         reject_record("b", "caption", "unreadable_image", k=0, input_hash="old")])
    assert store.rejected_keys("reason", ("id", "k", "n")) == set()  # transient: retried by the next run
    assert store.rejected_keys("caption", ("id", "k"), {"b": "old"}) == {("b", 0)}
    assert store.rejected_keys("caption", ("id", "k"), {"b": "new"}) == set()  # the row changed: look again
    # the same row rejected again after the change is a new record, skipped from then on
    store.write_rejects([reject_record("b", "caption", "unreadable_image", k=0, input_hash="new")])
    assert store.rejected_keys("caption", ("id", "k"), {"b": "new"}) == {("b", 0)}
    # a retried transient failure that now fails for good is recorded beside it, and skipped from then on
    store.write_rejects([reject_record("c", "reason", "prompt_too_long", k=0, n=3, input_hash="hc")])
    assert store.rejected_keys("reason", ("id", "k", "n")) == {("c", 0, 3)}


def test_provenance_is_recorded_and_a_change_is_refused(tmp_path):
    """Old behaviour: a store made by another model was reused silently (``already_done``)."""
    made = {"stage": "caption", "captioner": {"model": {"path": "/m/round1", "weights": "sha256:aaa"},
                                              "sampling": {"temperature": 1.0}}, "K": 8}
    store = Store(tmp_path)
    store.check_provenance("captions", made, record=True)
    store.table("captions").write(caption_rows(["a"]))
    assert Store(tmp_path).table("captions").provenance == made
    moved = {**made, "captioner": {**made["captioner"], "model": {"path": "/elsewhere", "weights": "sha256:aaa"}}}
    assert Store(tmp_path).check_provenance("captions", moved, record=False)  # same weights, other dir: same
    other = {**made, "captioner": {**made["captioner"], "model": {"path": "/m/round2", "weights": "sha256:bbb"}},
             "K": 4}
    with pytest.raises(StoreError) as error:
        Store(tmp_path).check_provenance("captions", other, record=True, hint="use another store")
    message = str(error.value)
    assert "table 'captions'" in message and "K: recorded 8, now 4" in message
    assert 'captioner.model.weights: recorded "sha256:aaa", now "sha256:bbb"' in message
    assert "'/m/round1'" in message and "'/m/round2'" in message and message.endswith("use another store")
    assert Store(tmp_path).table("captions").provenance == made  # a refused run records nothing
    legacy = Store(tmp_path / "legacy")
    legacy.table("captions").write(caption_rows(["a"]))
    with pytest.raises(StoreError, match="has rows but no record"):
        legacy.check_provenance("captions", made, record=True)


def test_merge_refuses_tables_of_different_provenance(tmp_path):
    sources = []
    for index, weights in enumerate(("sha256:aaa", "sha256:bbb")):
        store = Store(tmp_path / f"t{index}", writer=f"t{index}")
        store.check_provenance("captions", {"weights": weights}, record=True)
        store.table("captions").write(caption_rows([f"item{index}"]))
        sources.append(store.root)
    with pytest.raises(StoreError, match="made under other settings in .*t1 than in .*t0: weights"):
        merge(sources, tmp_path / "all")
    assert not (tmp_path / "all").exists()
    merge(sources[:1], tmp_path / "all")
    assert Store(tmp_path / "all").table("captions").provenance == {"weights": "sha256:aaa"}


def test_temp_files_are_ignored_and_cleaned(tmp_path):
    store = Store(tmp_path, writer="task0")
    store.table("captions").write(caption_rows(["a"]))
    directory = tmp_path / "captions"
    own = directory / f"{TEMP_PREFIX}task0-000001-deadbeef.parquet.tmp-123"
    fresh_other = directory / f"{TEMP_PREFIX}task1-000001-cafe.parquet.tmp-456"
    stale_other = directory / f"{TEMP_PREFIX}task2-000001-f00d.parquet.tmp-789"
    for path in (own, fresh_other, stale_other):
        path.write_bytes(b"PAR1 half a shard")
    os.utime(stale_other, (time.time() - 7200, time.time() - 7200))
    assert Store(tmp_path, writer="reader").table("captions").read().num_rows == 2
    reopened = Store(tmp_path, writer="task0").table("captions")
    assert not own.exists() and not stale_other.exists() and fresh_other.exists()
    assert len(reopened) == 2


def test_failed_write_leaves_no_shard(tmp_path, monkeypatch):
    captions = Store(tmp_path).table("captions")
    captions.write(caption_rows(["a"]))

    def crash(src, dst):
        raise OSError("disk vanished")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk vanished"):
        captions.write(caption_rows(["b"]))
    monkeypatch.undo()
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "captions").iterdir()) == ["_table.json", "part"]
    assert Store(tmp_path).table("captions").existing_keys() == {("a", 0), ("a", 1)}


def test_corrupt_shard_error_names_the_file(tmp_path):
    captions = Store(tmp_path).table("captions")
    captions.write(caption_rows(["a"]))
    shard = captions.write(caption_rows(["b"]))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(StoreError, match=f"corrupt or unreadable shard .*{shard.name}"):
        Store(tmp_path).table("captions").existing_keys()
    with pytest.raises(StoreError, match=shard.name):
        Store(tmp_path).table("captions").read()


def make_task_store(root: Path, ids, rejected=()) -> Path:
    store = Store(root, writer=root.name)
    store.table("captions").write(caption_rows(ids))
    if rejected:
        store.write_rejects([reject_record(item_id, "input", "unreadable_image") for item_id in rejected])
    return root


def test_merge_joins_disjoint_stores_and_is_resumable(tmp_path):
    sources = [make_task_store(tmp_path / "t0", ["a", "b"], rejected=["x"]),
               make_task_store(tmp_path / "t1", ["c"], rejected=["y"])]
    report = merge(sources, tmp_path / "all", expected_ids=["a", "b", "c", "x", "y"])
    assert report.rows == {"captions": 6, REJECTS: 2} and report.shards == {"captions": 2, REJECTS: 2}
    assert report.reject_counts == {"unreadable_image": 2}
    merged = Store(tmp_path / "all")
    assert merged.table_names() == ["captions", REJECTS]
    assert merged.table("captions").existing_keys() == {(i, k) for i in "abc" for k in (0, 1)}
    # an interrupted merge (one shard already there) finishes when rerun; nothing doubles
    again = merge(sources, tmp_path / "all")
    assert again.rows == report.rows and len(Store(tmp_path / "all").table("captions").read()) == 6


def test_merge_refuses_duplicates_missing_ids_and_foreign_shards(tmp_path):
    t0 = make_task_store(tmp_path / "t0", ["a", "b"])
    t1 = make_task_store(tmp_path / "t1", ["b", "c"])
    dest = tmp_path / "all"
    with pytest.raises(StoreError, match=r"2 key\(s\) in more than one source: \('b', 0\) in .*t0 and .*t1"):
        merge([t0, t1], dest)
    assert not dest.exists(), "a refused merge writes nothing"
    with pytest.raises(StoreError, match=r"'captions': 2 expected id\(s\) neither stored nor rejected: 'd'"):
        merge([t0], dest, expected_ids=["a", "b", "d", "e"])
    with pytest.raises(StoreError, match=r"table 'trajectories': 2 expected id\(s\)"):
        merge([t0], dest, expected_ids=["a", "b"], complete_tables=["captions", "trajectories"])
    make_task_store(dest, ["z"])
    with pytest.raises(StoreError, match="already holds shards that are not from these sources"):
        merge([t0], dest)
    with pytest.raises(StoreError, match="nope do not exist"):
        merge([tmp_path / "nope"], tmp_path / "other")
    with pytest.raises(StoreError, match="distinct stores other than the destination"):
        merge([t0, t1], t1)


# -- the kill test ---------------------------------------------------------------------------

ITEMS, BATCH = 30, 5
ALL_KEYS = {(f"item{i:03d}", k) for i in range(ITEMS) for k in (0, 1)}


def start_worker(store: Path, log: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, str(WORKER), str(store), str(log), "--items", str(ITEMS),
               "--batch", str(BATCH), "--sleep", "0.01", *extra]
    with open(log.with_suffix(".err"), "w") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                                stderr=stderr)


def logged_keys(log: Path) -> list[tuple]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [(line.split("\t")[0], int(line.split("\t")[1])) for line in lines if "\t" in line]


def kill_when(proc: subprocess.Popen, log: Path, ready, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready(log.read_text() if log.exists() else ""):
        if proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}) before the kill point: "
                                 f"{log.with_suffix('.err').read_text()[-2000:]}")
        assert time.monotonic() < deadline, "worker never reached the kill point"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def stored_keys(root: Path) -> tuple[set, set]:
    store = Store(root, writer="observer")
    return store.table("captions").existing_keys(), store.rejected_keys("caption", ("id", "k"))


def temp_files(root: Path) -> list[Path]:
    return sorted(root.glob(f"*/{TEMP_PREFIX}*"))


def test_kill_minus_nine_at_any_point_then_resume(tmp_path):
    rng = random.Random(20250716)
    root = tmp_path / "store"
    runs = [  # (extra worker args, when to kill)
        ((), lambda text, n=rng.randint(4, 20): text.count("\n") >= n),
        (("--stall", "before-rename", "--stall-at", str(rng.randint(1, 3))), lambda text: "STALL" in text),
        (("--stall", "mid-write", "--stall-at", str(rng.randint(1, 3))), lambda text: "STALL" in text),
        ((), None),
    ]
    for run, (extra, kill_point) in enumerate(runs):
        captions_before, rejected_before = stored_keys(root)
        log = tmp_path / f"run{run}.log"
        proc = start_worker(root, log, *extra)
        if kill_point is None:
            assert proc.wait(timeout=60) == 0, log.with_suffix(".err").read_text()
        else:
            kill_when(proc, log, kill_point)
        recomputed = set(logged_keys(log)) & (captions_before | rejected_before)
        assert not recomputed, f"run {run} recomputed stored keys {sorted(recomputed)[:5]}"
        if "--stall" in extra:
            assert temp_files(root), "the kill should have left a temp file behind"
            assert stored_keys(root)[0] >= captions_before, "read() ignores the temp file"

    assert not temp_files(root), "the final run cleaned up its dead temp files"
    store = Store(root, writer="observer")
    captions = store.table("captions").read()
    caption_keys = keys_of(captions, ("id", "k"))
    rejects = store.rejects.read()
    rejected = keys_of(rejects, ("id", "k"))
    assert len(caption_keys) == len(set(caption_keys)) and len(rejected) == len(set(rejected))
    assert set(caption_keys) | set(rejected) == ALL_KEYS and not set(caption_keys) & set(rejected)
    assert all(int(item_id[4:]) % 7 == 3 for item_id, _ in rejected)
    assert captions["caption"].to_pylist() == [fake_caption(i, k) for i, k in caption_keys]
    assert store.reject_counts("caption") == {"unreadable_image": len(rejected)}
