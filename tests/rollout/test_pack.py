"""``sophia-rollout pack``: every sample accounted for, exact rendering and loss masks, caps, order, manifest.

The data: three sources (SOPHIA trajectories as JSONL with image paths, text-only samples as parquet,
VQA samples as parquet with image bytes) with every reject reason and every drop reason, packed with
the tiny tokenizers (byte-level BPE without BOS, SentencePiece with BOS, and SentencePiece with a
dummy prefix). Expected conversations are rebuilt here from the rows with ``plan_tiles`` /
``image_token_string`` (not with the renderer), and the packed token ids are compared with the ids
of that whole string, so a pack is checked against an independent statement of the template and of
its tokenisation (a response tokenised on its own would differ under a dummy prefix).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from rollout.pack.build import (
    BAD_WEIGHT,
    EMPTY_RESPONSE,
    ZERO_WEIGHT,
    PackConfig,
    PackSource,
    mix_indices,
    pack_dataset,
)
from rollout.pack.planner import TOO_MANY_TILES, TOO_MANY_TOKENS
from rollout.pack.render import (
    IMAGE_PLACEHOLDER_MISMATCH,
    RESPONSE_MERGES_WITH_PROMPT,
    SPECIAL_TOKEN_IN_TEXT,
    ChatRenderer,
    RenderRejected,
    SystemPrompts,
    Tiling,
    TokenizedSample,
)
from rollout.pack.write import REJECTS_NAME
from sophia_common.cli import UserError
from sophia_common.config import ConfigError, build
from sophia_common.contract import TILE_FIELDS, read_manifest
from sophia_common.images import IMG_CONTEXT, image_token_string, plan_tiles
from sophia_common.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PROMPT = "You are a helpful multimodal assistant."
SLOW_PROMPT = "You think slowly: reason inside <think> and </think>, then answer."
MAX_SEQ_LEN = 4096
MAX_TILES_PER_PACK = 8
SIZES = {"square": (64, 64), "wide": (128, 64), "grid": (96, 64), "huge": (80, 60)}  # 1, 3, 7, 13 tiles
THINK = "<think> I count the shapes one by one. There are three. </think> The answer is \\boxed{3}."


def png(size, color=(10, 120, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def trajectory_rows() -> list[dict]:
    good = [
        ("t-think", "square", "How many circles are there?", THINK, 1.0),
        ("t-placeholder", "wide", "Look: <image>\nWhich shape is the largest?", "The blue square.", 0.75),
        ("t-grid", "grid", "Count the triangles.", "<think> Two rows of three. </think> 6", 0.5),
        ("t-long", "square", "Describe everything.", "step " * 5000, 1.0),
        ("t-huge", "huge", "How many stars?", "There are 4 stars.", 1.0),
        ("t-zero", "square", "Is it red?", "Yes.", 0.0),
    ] + [(f"t-small{i}", "square", f"What is {i} + {i}?", f"<think> {i} + {i} </think> {2 * i}", 1.0)
         for i in range(8)]
    rows = [{"id": i, "image": f"img/{kind}.png", "question": q, "response": r, "weight": w, "source": "geo"}
            for i, kind, q, r, w in good]
    return rows + [
        {"id": "t-empty", "image": "img/square.png", "question": "Why?", "response": "  "},
        {"id": "t-negative", "image": "img/square.png", "question": "Why?", "response": "Ok.", "weight": -1},
        {"id": "t-word-weight", "image": "img/square.png", "question": "Why?", "response": "Ok.",
         "weight": "hi"},
        {"id": "t-noimage", "question": "Why?", "response": "Ok."},
        {"id": "t-badpath", "image": "img/absent.png", "question": "Why?", "response": "Ok."},
        {"id": "t-special", "image": "img/square.png", "question": "Why?", "response": "Ok.<|im_end|>more"},
        {"id": "t-two", "image": "img/square.png", "question": "<image> vs <image>?", "response": "Same."},
    ]


TRAJECTORY_REJECTS = {EMPTY_RESPONSE: 1, BAD_WEIGHT: 2, "missing_image": 2, SPECIAL_TOKEN_IN_TEXT: 1,
                      IMAGE_PLACEHOLDER_MISMATCH: 1}


def text_rows() -> list[dict]:
    return [{"id": f"x{i}", "question": f"Solve {i}x = {3 * i}.", "answer": "3", "source": "numina",
             "response": f"<think> Divide by {i}. </think> x = 3" if i % 2 else f"x = 3 as {i}x = {3 * i}.",
             "weight": 1.0} for i in range(1, 7)]


def vqa_rows() -> list[dict]:
    return [{"id": f"v{i}", "image": png(SIZES["wide"] if i % 2 else SIZES["square"], (40 * i, 0, 0)),
             "question": f"Describe picture {i}.", "response": f"A plain picture, number {i}.",
             "source": "rlaif-v"} for i in range(6)]


@pytest.fixture(scope="module")
def tokenizers(tiny_root, tmp_path_factory) -> dict[str, Path]:
    """The shared tiny tokenizers plus the two shapes that break separate prompt/response tokenisation."""
    from sophia_tools.tiny.tokenizer import build_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    return {"bpe": tiny_root["tokenizer_bpe"], "sentencepiece": tiny_root["tokenizer_sentencepiece"],
            **{kind: build_tokenizer(root / kind, kind) for kind in ("sentencepiece_dummy_prefix", "bpe_paragraphs")}}


@pytest.fixture
def data(tmp_path) -> dict:
    (tmp_path / "img").mkdir()
    for name, size in SIZES.items():
        (tmp_path / "img" / f"{name}.png").write_bytes(png(size))
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "default.txt").write_text(DEFAULT_PROMPT + "\n")
    (tmp_path / "prompts" / "slow.txt").write_text(SLOW_PROMPT + "\n")
    trajectories = tmp_path / "trajectories.jsonl"
    trajectories.write_text("".join(json.dumps(row) + "\n" for row in trajectory_rows()))
    pq.write_table(pa.Table.from_pylist(text_rows()), tmp_path / "text.parquet")
    pq.write_table(pa.Table.from_pylist(vqa_rows()), tmp_path / "vqa.parquet")
    rows = {row["id"]: {**row, "kind": "trajectories"} for row in trajectory_rows()}
    rows.update({row["id"]: {**row, "kind": "text"} for row in text_rows()})
    rows.update({row["id"]: {**row, "kind": "vqa"} for row in vqa_rows()})
    return {"dir": tmp_path, "trajectories": trajectories, "text": tmp_path / "text.parquet",
            "vqa": tmp_path / "vqa.parquet", "rows": rows}


def write_recipe(data: dict, tokenizer_dir: Path, out: Path | None = None, **pack) -> Path:
    section = {
        "tokenizer_dir": str(tokenizer_dir),
        "max_seq_len": MAX_SEQ_LEN,
        "max_tiles_per_pack": MAX_TILES_PER_PACK,
        "default_system_prompt": str(data["dir"] / "prompts" / "default.txt"),
        "slow_thinking_prompt": str(data["dir"] / "prompts" / "slow.txt"),
        "packs_per_shard": 2,
        "sources": [{"path": str(data["trajectories"]), "kind": "trajectories"},
                    {"path": str(data["text"]), "kind": "text", "weight": 2.0},
                    {"path": str(data["vqa"]), "kind": "vqa", "weight": 0.5}],
        **({"out": str(out)} if out else {}),
        **pack,
    }
    recipe = data["dir"] / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"pack": section}))
    return recipe


def run_pack(recipe: Path, force: bool = False, **overrides):
    from sophia_common.config import read_recipe

    config = build(PackConfig, read_recipe(recipe)["pack"], "pack")
    for key, value in overrides.items():
        setattr(config, key, value)
    return pack_dataset(config, force=force, config_file=recipe)


def read_packs(out: Path) -> list[dict]:
    manifest = read_manifest(out)
    packs = [row for shard in manifest.shards for row in pq.read_table(out / shard).to_pylist()]
    assert len(packs) == manifest.packs
    return packs


def expected_conversation(row: dict, bos: str, prompt_only: bool = False) -> str:
    images = [] if row["kind"] == "text" else [plan_tiles(*SIZES[_size_name(row)]).num_tiles]
    strings = [image_token_string(tiles) for tiles in images]
    question = row["question"]
    if "<image>" in question:
        for string in strings:
            question = question.replace("<image>", string, 1)
    else:
        question = "".join(string + "\n" for string in strings) + question
    system = SLOW_PROMPT if "<think>" in row["response"] and "</think>" in row["response"] else DEFAULT_PROMPT
    prompt = f"{bos}<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    return prompt if prompt_only else f"{prompt}{row['response']}<|im_end|>\n"


def _size_name(row: dict) -> str:
    if isinstance(row["image"], bytes):
        return "wide" if Image.open(io.BytesIO(row["image"])).size == SIZES["wide"] else "square"
    return Path(row["image"]).stem


def samples_of(pack: dict, img_start_id: int) -> list[dict]:
    """Each sample of a pack row: its slice of every per-token column and its images (``<img>`` counted)."""
    bounds, first_image, samples = pack["cu_seqlens"], 0, []
    for s, sample_id in enumerate(pack["sample_ids"]):
        lo, hi = bounds[s], bounds[s + 1]
        ids = pack["input_ids"][lo:hi]
        last_image = first_image + ids.count(img_start_id)
        samples.append({"id": sample_id, "source": pack["sample_sources"][s],
                        "weight": pack["sample_weights"][s], "ids": ids, "mask": pack["loss_mask"][lo:hi],
                        "positions": pack["position_ids"][lo:hi],
                        "images": pack["images"][first_image:last_image],
                        "tiles": pack["image_tiles"][first_image:last_image]})
        first_image = last_image
    assert first_image == len(pack["images"]) == len(pack["image_tiles"])
    return samples


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece", "sentencepiece_dummy_prefix"])
def test_pack_end_to_end(tokenizers, data, kind):
    tokenizer = load_tokenizer(tokenizers[kind])
    bos = tokenizer.decode([tokenizer.bos_id]) if tokenizer.add_bos_token else ""
    bos_ids = [tokenizer.bos_id] if bos else []
    assert kind.startswith("sentencepiece") == bool(bos)
    out = data["dir"] / "packed"
    manifest = run_pack(write_recipe(data, tokenizers[kind], out))
    packs = read_packs(out)
    rows = data["rows"]

    seen = Counter()
    for position, pack in enumerate(packs):
        assert pack["pack_id"] == position
        assert pack["num_tokens"] == len(pack["input_ids"]) == pack["cu_seqlens"][-1] <= MAX_SEQ_LEN
        assert pack["num_tiles"] <= MAX_TILES_PER_PACK
        assert len(pack["loss_mask"]) == len(pack["position_ids"]) == pack["num_tokens"]
        for sample in samples_of(pack, tokenizer.token_to_id("<img>")):
            row, ids, mask = rows[sample["id"]], sample["ids"], sample["mask"]
            seen[sample["id"]] += 1
            assert sample["source"] == f"{row['kind']}/{row['source']}"
            assert sample["weight"] == pytest.approx(row.get("weight", 1.0))
            assert sample["positions"] == list(range(len(ids)))
            # Token ids, not decoded text: the whole conversation tokenised as one string, and the
            # loss starting right after the ids of the prompt alone (what the model gets at inference).
            assert ids == bos_ids + tokenizer.encode(expected_conversation(row, ""))
            assert mask.index(1) == len(bos_ids + tokenizer.encode(expected_conversation(row, "", prompt_only=True)))
            assert tokenizer.decode(ids) == expected_conversation(row, bos)
            masked = [token for token, m in zip(ids, mask) if m]
            assert tokenizer.decode(masked) == row["response"] + "<|im_end|>"
            assert mask[-1] == 0 and sum(mask) == len(masked) and masked[-1] == tokenizer.end_of_turn_id
            assert (ids[0] == tokenizer.bos_id and mask[0] == 0) if bos else ids[0] != tokenizer.bos_id
            if row["kind"] == "text":
                assert sample["images"] == [] and sample["tiles"] == []
                continue
            image = row["image"]
            original = image if isinstance(image, bytes) else (data["dir"] / image).read_bytes()
            plan = plan_tiles(*SIZES[_size_name(row)])
            assert sample["images"] == [original]
            assert sample["tiles"] == [{name: getattr(plan, name) for name in TILE_FIELDS}]
            assert ids.count(tokenizer.token_to_id(IMG_CONTEXT)) == 256 * plan.num_tiles

    # Every selected sample is in exactly one pack, or in one drop count; rejects are counted by reason.
    stats = manifest.stats
    rejected = ("t-empty", "t-negative", "t-word-weight", "t-noimage", "t-badpath", "t-special", "t-two")
    trajectories_ok = [i for i in rows if i.startswith("t-") and i not in rejected]
    packed_trajectories = set(trajectories_ok) - {"t-long", "t-huge", "t-zero"}
    assert {i: n for i, n in seen.items() if i.startswith("t-")} == dict.fromkeys(packed_trajectories, 1)
    assert {i: n for i, n in seen.items() if i.startswith("x")} == {f"x{i}": 2 for i in range(1, 7)}
    assert sum(n for i, n in seen.items() if i.startswith("v")) == 3
    assert stats["dropped_by_reason"] == {TOO_MANY_TILES: 1, TOO_MANY_TOKENS: 1, ZERO_WEIGHT: 1}
    assert stats["rejects_by_reason"] == dict(sorted(TRAJECTORY_REJECTS.items()))
    assert stats["samples_in"] == len(trajectories_ok) + 12 + 3
    assert stats["samples_packed"] == sum(seen.values()) == stats["samples_in"] - 3
    excluded = [json.loads(line) for line in (out / REJECTS_NAME).read_text().splitlines()]
    assert Counter(e["reason"] for e in excluded) == Counter({**TRAJECTORY_REJECTS, TOO_MANY_TILES: 1,
                                                              TOO_MANY_TOKENS: 1, ZERO_WEIGHT: 1})
    assert {e["id"] for e in excluded if e["stage"] == "pack"} == {"t-long", "t-huge", "t-zero"}
    by_source = {s["kind"]: s for s in stats["sources"]}
    assert by_source["trajectories"]["rejects_by_reason"] == dict(sorted(TRAJECTORY_REJECTS.items()))
    counts = {kind: (s["valid_rows"], s["selected"], s["packed"]) for kind, s in by_source.items()}
    assert counts == {"trajectories": (len(trajectories_ok), len(trajectories_ok), len(packed_trajectories)),
                      "text": (6, 12, 12), "vqa": (6, 3, 3)}

    # Length order, sharding and the manifest.
    lengths = [pack["num_tokens"] for pack in packs]
    assert lengths == sorted(lengths, reverse=True)
    assert manifest.shards == [f"packs-{i:05d}.parquet" for i in range(-(-len(packs) // 2))]
    assert read_manifest(out) == manifest and manifest.shard_of(len(packs) - 1)[1] == (len(packs) - 1) % 2
    assert manifest.tokenizer_fingerprint == tokenizer.fingerprint()
    assert (manifest.max_seq_len, manifest.max_tiles_per_pack, manifest.tokens_per_tile,
            manifest.image_size) == (MAX_SEQ_LEN, MAX_TILES_PER_PACK, 256, 448)
    assert stats["tokens"] == sum(lengths) and stats["packs"] == len(packs) == manifest.packs
    assert stats["efficiency"] == pytest.approx(sum(lengths) / (len(packs) * MAX_SEQ_LEN), abs=1e-6)
    assert stats["samples_per_pack_mean"] == pytest.approx(stats["samples_packed"] / len(packs), abs=1e-4)
    assert stats["truncated"] == 0
    provenance = manifest.provenance
    assert [s["path"] for s in provenance["sources"]] == [
        str(data[key]) for key in ("trajectories", "text", "vqa")]
    assert provenance["config_file"] == str(data["dir"] / "recipe.yaml") and provenance["created_at"]
    print(f"{kind}: efficiency {stats['efficiency']:.4f} over {len(packs)} packs")


def test_system_prompt_choice():
    prompts = SystemPrompts(default="plain", slow_thinking="slow")
    assert prompts.for_response("<think>\nhmm\n</think> 4") == "slow"
    assert prompts.for_response("4, no thinking") == "plain"
    assert prompts.for_response("<think> never closed") == "plain"


def test_mixing_weights_are_fractions_and_deterministic():
    half = mix_indices(10, 0.5, seed=0, key="a.parquet")
    assert len(half) == 5 == len(set(half.tolist())) and list(half) == sorted(half)
    assert np.array_equal(half, mix_indices(10, 0.5, seed=0, key="a.parquet"))
    assert len({tuple(mix_indices(10, 0.5, seed=s, key="a.parquet")) for s in range(6)}) > 1
    counts = Counter(mix_indices(10, 2.5, seed=1, key="a.parquet").tolist())
    assert sum(counts.values()) == 25 and set(counts.values()) == {2, 3} and len(counts) == 10
    assert len(mix_indices(10, 0.0, seed=0, key="a")) == 0 and len(mix_indices(0, 3.0, seed=0, key="a")) == 0
    with pytest.raises(ConfigError, match="mixing weight"):
        build(PackConfig, {"sources": [{"path": "x", "weight": -1}]}, "pack")


def test_a_dummy_prefix_tokenizer_needs_whole_conversation_tokenisation(tokenizers):
    """The bug this guards: with a dummy prefix, ``encode(response)`` starts with ``▁There``, which the
    model never produces after ``assistant\\n``; the renderer's target ids must be the in-context ones."""
    tokenizer = load_tokenizer(tokenizers["sentencepiece_dummy_prefix"])
    renderer = ChatRenderer(tokenizer, SystemPrompts(default="plain", slow_thinking="slow"), Tiling())
    sample = renderer.tokenize("How many stars?", "There are 4 stars.")
    targets = sample.input_ids[sample.target_start:sample.target_end].tolist()
    alone = tokenizer.encode("There are 4 stars.")
    assert targets[:-1] != alone  # the fixture really has a dummy prefix
    assert targets[:-1] == tokenizer.encode("<|im_start|>assistant\nThere are 4 stars.")[
        len(tokenizer.encode("<|im_start|>assistant\n")):]
    assert targets[-1] == tokenizer.end_of_turn_id


def test_a_response_that_merges_with_the_prompt_is_rejected_and_counted(tokenizers, data):
    """Qwen2-style BPE merges the prompt's closing newline with a response that starts with one."""
    merging = load_tokenizer(tokenizers["bpe_paragraphs"])
    renderer = ChatRenderer(merging, SystemPrompts(default="plain", slow_thinking="slow"), Tiling())
    with pytest.raises(RenderRejected) as rejected:
        renderer.tokenize("How many stars?", "\nThere are 4 stars.")
    assert rejected.value.reason == RESPONSE_MERGES_WITH_PROMPT and "'\\n\\n'" in rejected.value.detail
    plain = ChatRenderer(load_tokenizer(tokenizers["bpe"]), SystemPrompts("plain", "slow"), Tiling())
    assert len(plain.tokenize("How many stars?", "\nThere are 4 stars.")) > 0  # no merge: no problem
    newline = data["dir"] / "newline.jsonl"
    newline.write_text(json.dumps({"id": "nl", "question": "Why?", "response": "\nBecause."}) + "\n"
                       + json.dumps({"id": "ok", "question": "Why?", "response": "Because."}) + "\n")
    out = data["dir"] / "packed-nl"
    manifest = run_pack(write_recipe(data, tokenizers["bpe_paragraphs"], out),
                        sources=[PackSource(path=str(newline), kind="text", weight=2.0)])
    assert manifest.stats["dropped_by_reason"] == {RESPONSE_MERGES_WITH_PROMPT: 2}  # both selected copies
    assert manifest.stats["samples_packed"] == 2 and manifest.stats["samples_in"] == 4
    excluded = [json.loads(line) for line in (out / REJECTS_NAME).read_text().splitlines()]
    assert [(e["id"], e["reason"]) for e in excluded] == [("nl", RESPONSE_MERGES_WITH_PROMPT)] * 2


def test_truncate_keeps_the_mask_consistent(tiny_root, data):
    out = data["dir"] / "packed"
    manifest = run_pack(write_recipe(data, tiny_root["tokenizer_bpe"], out, oversize="truncate"))
    assert manifest.stats["truncated"] == 1
    assert manifest.stats["dropped_by_reason"] == {TOO_MANY_TILES: 1, ZERO_WEIGHT: 1}
    tokenizer = load_tokenizer(tiny_root["tokenizer_bpe"])
    img_start = tokenizer.token_to_id("<img>")
    (long,) = [s for pack in read_packs(out) for s in samples_of(pack, img_start) if s["id"] == "t-long"]
    ids, mask = long["ids"], long["mask"]
    assert len(ids) == MAX_SEQ_LEN and mask[-1] == 1
    response = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assert "step step" in response and "step " * 5000 != response and "<|im_end|>" not in response


def test_tokenized_sample_truncation_rules():
    sample = TokenizedSample(np.arange(10, dtype=np.int32), target_start=4, target_end=9)
    assert sample.truncated(10) is sample
    cut = sample.truncated(6)
    assert list(cut.input_ids) == [0, 1, 2, 3, 4, 5] and list(cut.loss_mask()) == [0, 0, 0, 0, 1, 1]
    assert sample.truncated(4) is None  # the prompt alone fills the budget: nothing left to learn


def test_refuses_existing_output_unless_forced(tiny_root, data):
    out = data["dir"] / "packed"
    recipe = write_recipe(data, tiny_root["tokenizer_bpe"], out)
    first = run_pack(recipe)
    with pytest.raises(UserError, match="already exists; pass --force"):
        run_pack(recipe)
    second = run_pack(recipe, force=True, seed=7)
    assert read_manifest(out).provenance["pack_config"]["seed"] == 7
    assert first.provenance["pack_config"]["seed"] == 0
    assert second.packs == read_manifest(out).packs
    assert not [p for p in data["dir"].iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    precious = data["dir"] / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(UserError, match="not a packed dataset"):
        run_pack(recipe, force=True, out=str(precious))
    assert (precious / "thesis.txt").is_file()


def test_same_seed_same_packs(tiny_root, data):
    recipe = write_recipe(data, tiny_root["tokenizer_bpe"])
    run_pack(recipe, out=str(data["dir"] / "a"))
    run_pack(recipe, out=str(data["dir"] / "b"))
    assert read_packs(data["dir"] / "a") == read_packs(data["dir"] / "b")


def test_bad_sources_name_the_file(tiny_root, data):
    recipe = write_recipe(data, tiny_root["tokenizer_bpe"], data["dir"] / "packed")
    missing = data["dir"] / "absent.jsonl"
    with pytest.raises(UserError, match=str(missing)):
        run_pack(recipe, sources=[PackSource(path=str(missing))])
    corrupt = data["dir"] / "corrupt.parquet"
    corrupt.write_bytes(data["text"].read_bytes()[:40] + b"garbage" * 10)
    with pytest.raises(UserError, match=str(corrupt)):
        run_pack(recipe, sources=[PackSource(path=str(corrupt), kind="text")])
    with pytest.raises(UserError, match="system prompt file .*nothing.txt"):
        run_pack(recipe, slow_thinking_prompt=str(data["dir"] / "nothing.txt"))
    with pytest.raises(ConfigError, match="tokenizer_dir"):
        run_pack(recipe, tokenizer_dir=None)
    assert not (data["dir"] / "packed").exists()


def test_nothing_to_pack_writes_nothing(tiny_root, data):
    recipe = write_recipe(data, tiny_root["tokenizer_bpe"], data["dir"] / "packed")
    with pytest.raises(UserError, match="nothing to pack"):
        run_pack(recipe, max_seq_len=16)
    assert not (data["dir"] / "packed").exists()


def test_cli_end_to_end(tiny_root, data):
    recipe = write_recipe(data, tiny_root["tokenizer_sentencepiece"])
    recipe.write_text(yaml.safe_dump({"pack": {**yaml.safe_load(recipe.read_text())["pack"], "sources": []}}))
    out = data["dir"] / "cli-out"
    command = [sys.executable, "-m", "sophia_tools.rollout_cli", "pack", "--config", str(recipe), "pack.max_seq_len=8192",
               "--in", str(data["trajectories"]), "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    manifest = read_manifest(out)
    assert summary["packs"] == manifest.packs and manifest.max_seq_len == 8192
    assert manifest.stats["dropped_by_reason"] == {TOO_MANY_TILES: 1, ZERO_WEIGHT: 1}  # t-long fits in 8192
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert subprocess.run(command + ["--force"], cwd=REPO, capture_output=True, timeout=120).returncode == 0


def test_trainer_loader_reads_the_packs(tiny_root, data):
    """The reader side of the contract (``sophia_megatron.data``) accepts what the packer writes."""
    pytest.importorskip("torch")
    from sophia_megatron.data import PackedDataset, build_micro_batch

    out = data["dir"] / "packed"
    manifest = run_pack(write_recipe(data, tiny_root["tokenizer_bpe"], out))
    dataset = PackedDataset(out)
    dataset.check(tokenizer_fingerprint=load_tokenizer(tiny_root["tokenizer_bpe"]).fingerprint(),
                  max_seq_len=MAX_SEQ_LEN)
    for index in range(len(dataset)):
        pack = dataset.pack(index)
        batch = build_micro_batch(pack, pad_to=16)
        assert batch.num_real_tokens == pack["num_tokens"]
        assert batch.loss_tokens == sum(pack["loss_mask"])  # every target follows a token of its own sample
        tiles = 0 if batch.pixel_values is None else batch.pixel_values.shape[0]
        assert tiles == pack["num_tiles"] and batch.tokens.shape[1] % 16 == 0
    assert len(dataset) == manifest.packs


def test_default_prompt_files_fall_back_to_the_shipped_ones(tiny_root, data):
    defaults = PackConfig()
    manifest = run_pack(write_recipe(data, tiny_root["tokenizer_bpe"], data["dir"] / "packed"),
                        default_system_prompt=defaults.default_system_prompt,
                        slow_thinking_prompt=defaults.slow_thinking_prompt)
    assert manifest.provenance["system_prompts"] == {
        "default": str(REPO / "configs" / "prompts" / "default_system.txt"),
        "slow_thinking": str(REPO / "configs" / "prompts" / "slow_thinking_system.txt")}
