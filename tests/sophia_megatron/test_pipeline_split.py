"""The trainer with an uneven pipeline split (1+3 and 3+1 layers over PP=2) matches the TP=1 run.

Each layer must be built on, loaded into and exported from the stage that holds it under
Megatron's ``num_layers_in_first/last_pipeline_stage``; a split that reached only one of the
model, the loader or the export would fail to load, train different weights or export the
wrong tensors. The 1+3 run loads a TP=1 PP=1 conversion (re-cut on load); the 3+1 run loads a
conversion made with the same split (read as is).
"""

from __future__ import annotations

import pytest
import torch

from conversion.convert import hf_to_mcore
from conversion.hf_formats import iter_checkpoint_tensors
from tests.sophia_megatron.test_trainer import reference, train  # noqa: F401 - the TP=1 losses fixture


@pytest.mark.slow
@pytest.mark.multirank
@pytest.mark.parametrize("first,last,converted_split", [(1, 3, False), (3, 1, True)], ids=["1+3", "3+1"])
def test_uneven_split_trains_like_tp1(tiny_training, reference, tmp_path, first, last,  # noqa: F811
                                      converted_split):
    training = dict(tiny_training)
    if converted_split:
        training["mcore"] = tmp_path / "mcore_split"
        hf_to_mcore(tiny_training["hf"], training["mcore"], tp=1, pp=2, first_stage_layers=first,
                    last_stage_layers=last)
    export = tmp_path / "exported"
    got = train(tmp_path, training, 2, "--export-hf", str(export),
                parallel={"pp": 2, "first_stage_layers": first, "last_stage_layers": last})
    diffs = [abs(a - b) for a, b in zip(got, reference, strict=True)]
    assert max(diffs) <= 1e-4, f"max |loss - TP1 loss| = {max(diffs):.2e}"
    before, after = dict(iter_checkpoint_tensors(tiny_training["hf"])), dict(iter_checkpoint_tensors(export))
    assert set(before) == set(after)
    frozen = [n for n in before if n.startswith(("vision_tower.", "multi_modal_projector."))]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    layers = [n for n in before if n.startswith("language_model.model.layers.")]
    assert all(not torch.equal(before[n], after[n]) for n in layers)  # every layer trained and exported
