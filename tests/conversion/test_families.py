"""The language-model family table is the one place a family is defined: a new row is enough.

A test family (a Qwen2 clone under new names) is added to ``conversion.families.FAMILIES`` only; a
checkpoint declaring it converts to Megatron, exports to the original format with the row's names,
and comes back bit-exact. A branch on a family's name anywhere else would reject it.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from types import MappingProxyType

from conversion import families
from conversion.convert import hf_to_mcore
from conversion.export import mcore_to_hf
from conversion.hf_formats import read_config
from tests.conversion.test_roundtrip import assert_same_tensors


def test_a_new_row_is_all_a_family_needs(tiny_root, tmp_path, monkeypatch):
    clone = dataclasses.replace(families.QWEN2, name="qwen2x", original_architecture="Qwen2XForCausalLM",
                                original_model_type="qwen2x", hf_text_model_type="qwen2x",
                                hf_text_architecture="Qwen2XForCausalLM")
    monkeypatch.setattr(families, "FAMILIES", MappingProxyType({**families.FAMILIES, "qwen2x": clone}))
    source = tmp_path / "src"
    shutil.copytree(tiny_root["vit300m_qwen2_hf"], source)
    config = json.loads((source / "config.json").read_text())
    config["text_config"].update(model_type="qwen2x", architectures=["Qwen2XForCausalLM"])
    (source / "config.json").write_text(json.dumps(config))
    hf_to_mcore(source, tmp_path / "mc", tp=2, pp=2)
    meta = json.loads((tmp_path / "mc" / "sophia_meta.json").read_text())
    assert meta["family"] == "vit300m_qwen2x"
    mcore_to_hf(tmp_path / "mc", tmp_path / "orig", fmt="original")
    llm = read_config(tmp_path / "orig")["llm_config"]
    assert (llm["architectures"], llm["model_type"]) == (["Qwen2XForCausalLM"], "qwen2x")
    hf_to_mcore(tmp_path / "orig", tmp_path / "mc2", tp=1, pp=1)
    mcore_to_hf(tmp_path / "mc2", tmp_path / "back", fmt="hf")
    assert_same_tensors(source, tmp_path / "back")


def test_every_row_is_complete():
    for family in families.FAMILIES.values():
        hf_names = {hf for _, hf in family.layer_names} | set(family.fused_qkv.hf if family.fused_qkv else ())
        for needed in ("self_attn.q_proj.*", "self_attn.o_proj.*", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                       "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"):
            assert any(name == needed or name.startswith(needed.rstrip("*")) for name in hf_names), \
                (family.name, needed)
        assert {hf for _, hf in family.names} == {"language_model.model.embed_tokens.weight",
                                                  "language_model.model.norm.weight",
                                                  "language_model.lm_head.weight"}
        assert (family.qkv_bias is None) == (family.original_bias_key is not None)
