"""The Megatron checkpoint contract (``sophia_common/mcore_checkpoint.py``): names, kinds, tracker, metadata."""

from __future__ import annotations

import json

import pytest

from sophia_common.mcore_checkpoint import (
    CONVERTED,
    TRAINING,
    CheckpointError,
    TrainingMeta,
    checkpoint_kind,
    iter_dir_name,
    meta_kind,
    rank_dir_name,
    rank_file,
    read_meta,
    read_tracker,
    read_training_meta,
    write_tracker,
    write_training_meta,
)


def test_megatron_lm_names():
    assert iter_dir_name(0) == "iter_0000000" and iter_dir_name("42") == "iter_0000042"
    assert iter_dir_name("release") == "release"
    assert rank_dir_name(3, 0, pp=1) == "mp_rank_03" and rank_dir_name(3, 1, pp=2) == "mp_rank_03_001"
    assert str(rank_file("/c", 7, 1, 1, 4)) == "/c/iter_0000007/mp_rank_01_001/model_optim_rng.pt"


def test_tracker_round_trip_and_bad_content(tmp_path):
    assert read_tracker(tmp_path) is None
    write_tracker(tmp_path, 12)
    assert read_tracker(tmp_path) == 12 and not list(tmp_path.glob(".*tmp*"))
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("release\n")
    assert read_tracker(tmp_path) == "release"
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("twelve")
    with pytest.raises(CheckpointError, match="latest_checkpointed_iteration.txt: expected an iteration number"):
        read_tracker(tmp_path)


def test_kinds_explicit_and_from_older_files(tmp_path):
    assert meta_kind({"kind": "converted", "mcore_dir": "x"}) == CONVERTED  # the explicit kind wins
    assert meta_kind({"arch": {}}) == CONVERTED and meta_kind({"mcore_dir": "/m", "step": 1}) == TRAINING
    with pytest.raises(CheckpointError, match="unknown checkpoint kind 'other'"):
        meta_kind({"kind": "other"})
    assert checkpoint_kind(tmp_path) is None
    meta = TrainingMeta(mcore_dir="/m", step=3, tp=2, pp=1, data="/d", identity={"tp": 2})
    write_training_meta(tmp_path, meta)
    assert checkpoint_kind(tmp_path) == TRAINING and read_training_meta(tmp_path) == meta
    assert json.loads((tmp_path / "sophia_meta.json").read_text())["kind"] == "training"


def test_reader_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="sophia_meta.json: file not found"):
        read_meta(tmp_path)
    (tmp_path / "sophia_meta.json").write_text("{nope")
    with pytest.raises(CheckpointError, match="sophia_meta.json: not valid JSON"):
        read_meta(tmp_path)
    (tmp_path / "sophia_meta.json").write_text(json.dumps({"kind": "converted", "arch": {}}))
    with pytest.raises(CheckpointError, match="a converted checkpoint, not a training run's"):
        read_training_meta(tmp_path)
    (tmp_path / "sophia_meta.json").write_text(json.dumps({"kind": "training", "mcore_dir": "/m"}))
    with pytest.raises(CheckpointError, match="missing data, pp, step, tp"):
        read_training_meta(tmp_path)
