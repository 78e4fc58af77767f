"""The packed-dataset loader: deterministic order, O(1) resume, disjoint DP ranks, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sophia_common.contract import ContractError
from sophia_megatron.data import PackedDataset, PackOrder, PackStream, build_micro_batch, step_positions


def test_order_is_a_function_of_seed_epoch_position():
    order = PackOrder(num_packs=100, packs_per_shard=48, block=16, seed=3)
    epoch0 = [order.pack_at(p) for p in range(100)]
    assert sorted(epoch0) == list(range(100))  # every pack once per epoch
    assert [PackOrder(100, 48, 16, 3).pack_at(p) for p in range(100)] == epoch0  # deterministic, no state
    epoch1 = [order.pack_at(100 + p) for p in range(100)]
    assert sorted(epoch1) == list(range(100)) and epoch1 != epoch0
    assert [PackOrder(100, 48, 16, 4).pack_at(p) for p in range(100)] != epoch0  # the seed matters
    # Shuffled in row-group blocks (shards of 48 packs hold blocks of 16; the last shard one of 4):
    # each run of 16 positions stays inside one block, the short block comes last, and the packs
    # inside a block are shuffled too.
    assert order.blocks() == [(0, 16), (16, 16), (32, 16), (48, 16), (64, 16), (80, 16), (96, 4)]
    runs = [{i // 16 for i in epoch0[k:k + 16]} for k in range(0, 96, 16)]
    assert all(len(run) == 1 for run in runs) and sorted(epoch0[96:]) == [96, 97, 98, 99], epoch0
    assert [min(run) for run in runs] != sorted(min(run) for run in runs)  # blocks are shuffled
    assert epoch0[:16] != sorted(epoch0[:16])


def test_dp_ranks_read_disjoint_packs_and_a_step_does_not_depend_on_dp():
    for packs_per_step, block in ((4, 16), (6, 16), (2, 1), (8, 3)):
        seen = []
        for step in range(40):
            whole = step_positions(step, packs_per_step, 0, 1, block)
            for dp in (d for d in (2, 4) if packs_per_step % d == 0):
                split = [p for rank in range(dp) for p in step_positions(step, packs_per_step, rank, dp, block)]
                assert split == whole  # ranks disjoint; the global batch is the same at any DP
            seen += whole
        assert len(seen) == len(set(seen))  # no position twice
        rounds = 40 // block * block  # after whole rounds of ``block`` steps, no gap either
        assert set(range(rounds * packs_per_step)) <= set(seen)
    assert step_positions(17, 4, 1, 2, 16) == [4 * 16 + 1 + 2 * 16, 4 * 16 + 1 + 3 * 16]  # lanes 2, 3 of round 1
    with pytest.raises(ValueError, match="multiple of data parallelism"):
        step_positions(0, 3, 0, 2)


def test_stream_resumes_without_replay(tiny_training):
    dataset = PackedDataset(tiny_training["data"])
    streams = [PackStream(dataset, seed=0, packs_per_step=4, dp_rank=r, dp=2) for r in range(2)]
    fresh = PackStream(PackedDataset(tiny_training["data"]), seed=0, packs_per_step=4, dp_rank=1, dp=2)
    assert fresh.pack_indices(7) == streams[1].pack_indices(7)  # resume at step 7 without replaying 0..6
    a, b = streams[0].pack_indices(0), streams[1].pack_indices(0)
    assert not set(a) & set(b)


@pytest.fixture(scope="module")
def big_shards(tmp_path_factory):
    """Two shards of 64 packs, row groups of 16 (as the writer writes them)."""
    from sophia_tools.bench.loader import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("loader") / "packed", packs=128, packs_per_shard=64, seq=512,
                           images=False)


def test_a_pack_read_costs_its_row_group_not_its_shard(big_shards):
    dataset = PackedDataset(big_shards)
    pack = dataset.pack(37)
    assert pack["pack_id"] == 37
    shard_bytes = (big_shards / "packs-00000.parquet").stat().st_size
    assert dataset.row_groups_read == 1 and dataset.bytes_read < shard_bytes / 2, (dataset.bytes_read, shard_bytes)
    dataset.pack(38)  # same row group: no new read
    assert dataset.row_groups_read == 1
    assert dataset.pack(100)["pack_id"] == 100 and dataset.row_groups_read == 2


@pytest.mark.parametrize("dp,packs_per_step", [(4, 4), (2, 6), (1, 3)])
def test_stream_reads_each_row_group_once_and_uses_all_of_it(big_shards, dp, packs_per_step):
    dataset = PackedDataset(big_shards)
    stream = PackStream(dataset, seed=5, packs_per_step=packs_per_step, dp_rank=dp - 1, dp=dp, load_pixels=False)
    for step in range(32):  # two rounds of 16 steps: every lane walks two whole row groups
        stream.micro_batches(step)
    assert dataset.row_groups_read <= 2 * (packs_per_step // dp)  # fewer when a block comes back cached
    assert dataset.bytes_read <= 2 * dataset.packs_bytes, (dataset.bytes_read, dataset.packs_bytes)


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
        assert torch.equal(mb.loss_mask[0, cu[i]: cu[i + 1] - 1], expected / w if w else (expected != 0).float())
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
