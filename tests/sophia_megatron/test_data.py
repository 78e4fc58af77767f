"""The packed-dataset loader: deterministic order, O(1) resume, disjoint DP ranks, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sophia_common.contract import ContractError
from sophia_megatron.data import PackedDataset, PackStream, build_micro_batch, pack_at, step_positions


def test_order_is_a_function_of_seed_epoch_position(tiny_training):
    n = len(PackedDataset(tiny_training["data"]))
    epoch0 = [pack_at(p, n, seed=3) for p in range(n)]
    assert sorted(epoch0) == list(range(n))  # every pack once per epoch
    assert [pack_at(p, n, seed=3) for p in range(n)] == epoch0  # deterministic
    epoch1 = [pack_at(n + p, n, seed=3) for p in range(n)]
    assert sorted(epoch1) == list(range(n)) and epoch1 == [pack_at(p, n, seed=4) for p in range(n)]


def test_dp_ranks_read_disjoint_packs_and_resume_seeks(tiny_training):
    dataset = PackedDataset(tiny_training["data"])
    streams = [PackStream(dataset, seed=0, packs_per_step=4, dp_rank=r, dp=2) for r in range(2)]
    for step in range(3):
        a, b = (s.pack_indices(step) for s in streams)
        positions = [*step_positions(step, 4, 0, 2), *step_positions(step, 4, 1, 2)]
        assert positions == list(range(step * 4, step * 4 + 4))  # the step's slice, split over ranks
        assert a + b == [pack_at(p, len(dataset), 0) for p in positions]
    fresh = PackStream(PackedDataset(tiny_training["data"]), seed=0, packs_per_step=4, dp_rank=1, dp=2)
    assert fresh.pack_indices(7) == streams[1].pack_indices(7)  # resume at step 7 without replaying 0..6
    with pytest.raises(ValueError, match="multiple of data parallelism"):
        step_positions(0, 3, 0, 2)


def test_micro_batch_shift_mask_weights_and_padding(tiny_training):
    dataset = PackedDataset(tiny_training["data"])
    pack = dataset.pack(0)
    mb = build_micro_batch(pack, pad_to=16)
    n = len(pack["input_ids"])
    assert mb.tokens.shape[1] % 16 == 0 and mb.num_real_tokens == n
    assert torch.equal(mb.labels[0, : n - 1], torch.tensor(pack["input_ids"][1:]))
    cu = pack["cu_seqlens"]
    assert mb.cu_seqlens.tolist()[: len(cu)] == cu and mb.cu_seqlens[-1] == mb.tokens.shape[1]
    weight = mb.loss_weight[0]
    assert torch.all(weight[n:] == 0) and torch.all(weight[torch.tensor(cu[1:]) - 1] == 0)
    for i, w in enumerate(pack["sample_weights"]):  # the shifted assistant mask, times the reward
        expected = torch.tensor(pack["loss_mask"][cu[i] + 1: cu[i + 1]], dtype=torch.float32) * w
        assert torch.equal(weight[cu[i]: cu[i + 1] - 1], expected)
    for i in range(len(cu) - 1):  # positions restart per sample
        assert mb.position_ids[0, cu[i]] == 0


def test_pixels_are_produced_from_the_stored_bytes(tiny_training):
    dataset = PackedDataset(tiny_training["data"])
    pack = next(dataset.pack(i) for i in range(len(dataset)) if dataset.pack(i)["images"])
    mb = build_micro_batch(pack)
    assert mb.pixel_values.shape == (sum(1 for _ in pack["images"]), 3, 448, 448)
    assert mb.pixel_values.dtype == torch.float32


def test_corrupt_shard_names_the_file(tiny_training, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_training["data"], data)
    shard = data / "packs-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ContractError, match="packs-00000.parquet"):
        PackedDataset(data).pack(0)


def test_schema_version_mismatch_is_refused(tiny_training, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_training["data"], data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (data / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ContractError, match="schema version 99"):
        PackedDataset(data)
