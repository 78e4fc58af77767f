"""Rollout input reading (each reject reason, JSONL + base64, parquet + bytes, relative paths), sharding."""

from __future__ import annotations

import base64
import io
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rollout.inputs import (
    BAD_ROW,
    EMPTY_QUESTION,
    INPUT_STAGE,
    MISSING_ANSWER,
    MISSING_ID,
    MISSING_IMAGE,
    UNREADABLE_IMAGE,
    InputRow,
    read_inputs,
)
from rollout.sharding import Shard, shard_of, split_ids
from sophia_common.cli import UserError


def png_bytes(color=(200, 30, 30), size=(8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path, records):
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def data_dir(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "good.png").write_bytes(png_bytes())
    (tmp_path / "img" / "truncated.png").write_bytes(png_bytes(size=(64, 64))[:60])
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "abs.png").write_bytes(png_bytes((0, 0, 255)))
    return tmp_path


def row(item_id, **fields):
    return {"id": item_id, "question": "What is shown?", "answer": "7", "source": "geo", **fields}


def test_jsonl_good_rows_and_every_reject_reason(data_dir):
    encoded = base64.b64encode(png_bytes()).decode()
    path = write_jsonl(data_dir / "train.jsonl", [
        row("rel", image="img/good.png", difficulty="hard"),
        row("abs", image=str(data_dir / "elsewhere" / "abs.png")),
        row("b64", image_b64=encoded),
        row(17, image="img/good.png", answer=3.5, source=None),
        {"question": "q", "answer": "1", "image": "img/good.png"},
        row("   ", image="img/good.png"),
        "{not json",
        "[1, 2]",
        row("noq", image="img/good.png", question="  "),
        row("noa", image="img/good.png", answer=""),
        row("nulla", image="img/good.png", answer=None),
        row("nofile", image="img/missing.png"),
        row("noimage"),
        row("trunc", image="img/truncated.png"),
        row("badb64", image_b64="%%%not base64"),
        row("notpng", image_b64=base64.b64encode(b"hello").decode()),
        row("both", image="img/good.png", image_b64=encoded),
        "",
    ])
    result = read_inputs(path)
    assert [r.id for r in result.rows] == ["rel", "abs", "b64", "17"]
    rel, absolute, b64, numeric = result.rows
    assert rel.image == data_dir / "img" / "good.png" and rel.difficulty == "hard" and rel.source == "geo"
    assert absolute.image == data_dir / "elsewhere" / "abs.png" and absolute.difficulty is None
    assert b64.image == png_bytes() and b64.image_bytes() == rel.image_bytes()
    assert numeric.answer == "3.5" and numeric.source == ""

    reasons = {record["id"]: record["reason"] for record in result.rejects}
    assert reasons == {
        "<train.jsonl line 5>": MISSING_ID, "<train.jsonl line 6>": MISSING_ID,
        "<train.jsonl line 7>": BAD_ROW, "<train.jsonl line 8>": BAD_ROW,
        "noq": EMPTY_QUESTION, "noa": MISSING_ANSWER, "nulla": MISSING_ANSWER,
        "nofile": MISSING_IMAGE, "noimage": MISSING_IMAGE, "trunc": UNREADABLE_IMAGE,
        "badb64": UNREADABLE_IMAGE, "notpng": UNREADABLE_IMAGE, "both": BAD_ROW,
    }
    assert len(result.rejects) == len(reasons), "one reject per bad row"
    by_id = {record["id"]: record for record in result.rejects}
    assert by_id["trunc"]["detail"].startswith("train.jsonl line 14: cannot decode image")
    assert str(data_dir / "img" / "missing.png") in by_id["nofile"]["detail"]
    assert all(r["stage"] == INPUT_STAGE and r["k"] is None and r["n"] is None for r in result.rejects)
    assert result.reject_counts()[MISSING_ID] == 2


def test_parquet_with_bytes_structs_and_relative_paths(data_dir):
    sub = data_dir / "sub"
    sub.mkdir()
    (sub / "local.png").write_bytes(png_bytes((1, 2, 3)))
    pq.write_table(pa.table({
        "id": ["bytes", "none", "bad"],
        "image": [png_bytes(), None, b"\x89PNG garbage"],
        "question": ["q1", "q2", "q3"],
        "answer": ["1", "2", "3"],
        "source": ["a", "b", "c"],
        "difficulty": [0.5, None, 2.0],
    }), sub / "bytes.parquet")
    result = read_inputs(sub / "bytes.parquet")
    assert [r.id for r in result.rows] == ["bytes"] and result.rows[0].image == png_bytes()
    assert result.rows[0].difficulty == "0.5" and result.rows[0].source == "a"
    assert {r["id"]: r["reason"] for r in result.rejects} == {"none": MISSING_IMAGE, "bad": UNREADABLE_IMAGE}
    assert result.rejects[1]["detail"].startswith("bytes.parquet row 2: cannot decode image")

    struct = pa.array([{"bytes": png_bytes(), "path": None}, {"bytes": None, "path": "local.png"},
                       {"bytes": None, "path": "local.png"}])
    pq.write_table(pa.table({"id": ["s1", "s2", "s3"], "image": struct, "question": ["q"] * 3,
                             "answer": [2.0, float("nan"), 3.0]}), sub / "hf.parquet")
    result = read_inputs(sub / "hf.parquet")
    assert [r.id for r in result.rows] == ["s1", "s3"] and result.rows[0].answer == "2.0"
    assert result.rows[0].image == png_bytes() and result.rows[1].image == sub / "local.png"
    assert result.rejects[0]["id"] == "s2" and result.rejects[0]["reason"] == MISSING_ANSWER

    pq.write_table(pa.table({"id": ["p"], "image": ["local.png"], "question": ["q"], "answer": ["1"]}),
                   sub / "paths.parquet")
    assert read_inputs(sub / "paths.parquet").rows[0].image == sub / "local.png"


def test_duplicate_ids_are_an_error_that_says_what_to_do(data_dir):
    """Old behaviour: every copy of a repeated id was dropped as a reject and the run exited 0."""
    good = "img/good.png"
    first = write_jsonl(data_dir / "a.jsonl", [row("x", image=good), row("y", image=good)])
    second = write_jsonl(data_dir / "b.jsonl", [row("y", image=good), row("t", image="img/truncated.png")])
    with pytest.raises(UserError, match=r"1 id\(s\) occur more than once in the input: 'y' at a.jsonl line 2, "
                                        r"b.jsonl line 1\. Every row needs its own id .*make the ids unique"):
        read_inputs([first, second])
    with pytest.raises(UserError, match="occur more than once"):  # whichever shard owns the id
        read_inputs([first, second], Shard(1, 7))
    result = read_inputs(second)
    assert [r.id for r in result.rows] == ["y"]
    assert {r["id"]: r["reason"] for r in result.rejects} == {"t": UNREADABLE_IMAGE}
    assert [r.id for r in read_inputs(second, check_images=False).rows] == ["y", "t"]
    with pytest.raises(UserError, match="listed twice"):
        read_inputs([first, first])


def test_unreadable_files_are_user_errors_naming_the_file(data_dir):
    with pytest.raises(UserError, match="nope.jsonl does not exist"):
        read_inputs(data_dir / "nope.jsonl")
    (data_dir / "rows.csv").write_text("id,question\n")
    with pytest.raises(UserError, match=r"rows.csv: unknown format '.csv'"):
        read_inputs(data_dir / "rows.csv")
    (data_dir / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(UserError, match="cannot read rollout input .*broken.parquet"):
        read_inputs(data_dir / "broken.parquet")
    pq.write_table(pa.table({"id": ["a"], "question": ["q"]}), data_dir / "thin.parquet")
    with pytest.raises(UserError, match="thin.parquet has no column.s. answer, image"):
        read_inputs(data_dir / "thin.parquet")
    (data_dir / "latin1.jsonl").write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"latin1.jsonl, line 3: not UTF-8 \(byte 0xe9 at column 12\)"):
        read_inputs(data_dir / "latin1.jsonl")


def test_shards_partition_rows_and_rejects(data_dir):
    records = [row(f"item{i}", image="img/good.png") for i in range(40)]
    records += [row("noa", image="img/good.png", answer=None), "{bad"]
    path = write_jsonl(data_dir / "all.jsonl", records)
    whole = read_inputs(path, check_images=False)
    parts = [read_inputs(path, Shard(index, 3), check_images=False) for index in range(3)]
    ids = [[r.id for r in part.rows] for part in parts]
    assert sorted(sum(ids, [])) == sorted(r.id for r in whole.rows)
    assert all(set(a).isdisjoint(b) for i, a in enumerate(ids) for b in ids[i + 1:])
    assert all(shard_of(item_id, 3) == index for index, part in enumerate(ids) for item_id in part)
    rejects = sorted(record["id"] for part in parts for record in part.rejects)
    assert rejects == sorted(record["id"] for record in whole.rejects)
    assert rejects == ["<all.jsonl line 42>", "noa"]


def test_shard_parsing_and_errors():
    assert Shard.parse("0/4") == Shard(0, 4) and Shard.parse(" 3 / 4 ") == Shard(3, 4)
    assert str(Shard(2, 8)) == "2/8" and Shard(2, 8).tag == "00002of00008"
    assert Shard().owns("anything") and Shard.parse("0/1").count == 1
    for text, message in [("4/4", r"index must be in 0\.\.3"), ("-1/4", "index must be in"),
                          ("1/0", "count must be at least 1"), ("a/b", "expected i/n"), ("", "expected i/n"),
                          ("1", "expected i/n"), ("1/2/3", "expected i/n")]:
        with pytest.raises(UserError, match=message):
            Shard.parse(text)


def test_sharding_is_stable_disjoint_covering_and_order_free():
    # pinned values: a change here would silently reshuffle every resumed array job
    assert [shard_of(f"item{i}", 8) for i in range(10)] == [2, 0, 2, 4, 3, 0, 0, 0, 4, 4]
    assert shard_of("é", 5) == 3
    ids = [f"q-{i}" for i in range(3000)]
    parts = split_ids(ids, 7)
    assert sorted(sum(parts, [])) == sorted(ids) and sum(map(len, parts)) == len(ids)
    assert all(0.8 * 3000 / 7 < len(part) < 1.2 * 3000 / 7 for part in parts)
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    assert [set(part) for part in split_ids(shuffled, 7)] == [set(part) for part in parts]
    assert [Shard(i, 7).select(ids) for i in range(7)] == parts
    with pytest.raises(ValueError):
        split_ids(ids, 0)


def test_input_row_reads_image_lazily(tmp_path):
    (tmp_path / "x.png").write_bytes(png_bytes())
    assert InputRow("a", "q", "1", "s", tmp_path / "x.png").image_bytes() == png_bytes()


def test_content_hash_changes_with_the_row_and_its_image_file(data_dir):
    """Rejects are keyed by it: a repaired image or an edited row must get a new hash, an untouched one not."""
    path = write_jsonl(data_dir / "h.jsonl", [row("a", image="img/truncated.png"), row("b", image="img/good.png")])
    before = read_inputs(path).content_hashes()
    assert before == read_inputs(path, check_images=False).content_hashes()  # stable across reads
    assert len(set(before.values())) == 2 and all(len(value) == 64 for value in before.values())
    (data_dir / "img" / "truncated.png").write_bytes(png_bytes(size=(64, 64)))  # the image is repaired
    repaired = read_inputs(path)
    assert [r.id for r in repaired.rows] == ["a", "b"]
    assert repaired.content_hashes()["a"] != before["a"] and repaired.content_hashes()["b"] == before["b"]
    write_jsonl(path, [row("a", image="img/truncated.png"), row("b", image="img/good.png", answer="8")])
    assert read_inputs(path).content_hashes()["b"] != before["b"]  # the row itself changed
