"""HF -> Megatron -> HF is bit-exact for every tensor, both formats, TP in {1, 2} x PP in {1, 2}.

Config, tokenizer and index files come back byte-identical; exporting to the *other* format
gives the same tensors as the other fixture of the same weights.
"""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
import torch

from conversion.convert import hf_to_mcore
from conversion.export import mcore_to_hf
from conversion.hf_formats import iter_checkpoint_tensors

SHAPES = ("vit300m_qwen2", "vit300m_internlm2", "vit6b_qwen2")
LAYOUTS = ((1, 1), (2, 1), (1, 2), (2, 2))


def assert_same_tensors(a: Path, b: Path) -> None:
    left, right = dict(iter_checkpoint_tensors(a)), dict(iter_checkpoint_tensors(b))
    assert set(left) == set(right)
    different = [n for n in left if left[n].dtype != right[n].dtype or not torch.equal(left[n], right[n])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.parametrize("fmt", ("hf", "original"))
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_bit_exact(tiny_root, tmp_path, shape, fmt):
    source = tiny_root[f"{shape}_{fmt}"]
    for tp, pp in LAYOUTS:
        mcore, back = tmp_path / f"mc{tp}{pp}", tmp_path / f"hf{tp}{pp}"
        hf_to_mcore(source, mcore, tp=tp, pp=pp)
        ranks = sorted(p.name for p in (mcore / "iter_0000000").iterdir())
        assert len(ranks) == tp * pp, ranks
        mcore_to_hf(mcore, back)
        assert_same_tensors(source, back)
        aux = sorted(p.name for p in source.iterdir() if not p.name.endswith(".safetensors"))
        assert sorted(p.name for p in back.iterdir() if not p.name.endswith(".safetensors")) == aux
        mismatched = [n for n in aux if not filecmp.cmp(source / n, back / n, shallow=False)]
        assert not mismatched, f"files changed in the round trip: {mismatched}"


@pytest.mark.parametrize("shape", SHAPES)
def test_export_to_other_format(tiny_root, tmp_path, shape):
    hf_to_mcore(tiny_root[f"{shape}_original"], tmp_path / "mc", tp=2, pp=2)
    mcore_to_hf(tmp_path / "mc", tmp_path / "as_hf", fmt="hf")
    assert_same_tensors(tiny_root[f"{shape}_hf"], tmp_path / "as_hf")


def test_vocab_padded_for_tp_and_cut_on_export(tiny_root, tmp_path):
    source = tiny_root["vit300m_qwen2_hf"]
    hf_to_mcore(source, tmp_path / "mc", tp=2, pp=1)
    state = torch.load(tmp_path / "mc/iter_0000000/mp_rank_01/model_optim_rng.pt", weights_only=True)["model"]
    embedding = state["language_model.embedding.word_embeddings.weight"]
    vocab = dict(iter_checkpoint_tensors(source))["language_model.model.embed_tokens.weight"].shape[0]
    assert vocab % 128 != 0
    assert embedding.shape[0] * 2 == -(-vocab // 256) * 256  # padded to a multiple of 128 * TP, halved
    assert torch.count_nonzero(embedding[vocab - embedding.shape[0]:]) == 0  # padding rows are zeros


@pytest.mark.parametrize("first,last", ((1, 3), (3, 1)))
def test_uneven_pipeline_split_round_trip(tiny_root, tmp_path, first, last):
    # Bug caught: layer placement or local indices that ignore the uneven split (an even 2+2 would
    # put layer 1 on stage 0 as local 1, not on stage 1 as local 0) or an export that assumes it.
    source = tiny_root["vit300m_internlm2_original"]
    mcore = tmp_path / "mc"
    hf_to_mcore(source, mcore, tp=2, pp=2, first_stage_layers=first, last_stage_layers=last)
    for pp_rank, count in enumerate((first, last)):
        state = torch.load(mcore / f"iter_0000000/mp_rank_01_{pp_rank:03d}/model_optim_rng.pt",
                           weights_only=True)["model"]
        indices = {int(n.split(".")[3]) for n in state if n.startswith("language_model.decoder.layers.")}
        assert indices == set(range(count)), (pp_rank, sorted(indices))
    mcore_to_hf(mcore, tmp_path / "back")
    assert_same_tensors(source, tmp_path / "back")


def test_uneven_split_that_does_not_fit_is_refused(tiny_root, tmp_path):
    from sophia_common.cli import UserError

    with pytest.raises(UserError, match="cannot be split over PP=2"):
        hf_to_mcore(tiny_root["vit300m_qwen2_hf"], tmp_path / "mc", tp=1, pp=2, first_stage_layers=1,
                    last_stage_layers=1)
    assert not (tmp_path / "mc").exists()
