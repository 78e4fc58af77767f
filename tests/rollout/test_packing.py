"""Packing plan invariants (every sample placed once, caps held), known answers, and the benchmark CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rollout.pack.planner import TOO_MANY_TILES, TOO_MANY_TOKENS, lower_bound_packs, plan_packs
from sophia_common.cli import UserError
from sophia_tools.bench.packing import generate_lengths, main, read_lengths
from sophia_tools.profile_cli import main as profile_main


def assert_valid_plan(plan, tokens, tiles, max_tokens, max_tiles, oversize="drop"):
    tokens = np.asarray(tokens)
    tiles = np.zeros_like(tokens) if tiles is None else np.asarray(tiles)
    placed = np.concatenate([plan.sample_order, plan.dropped])
    assert np.array_equal(np.sort(placed), np.arange(len(tokens))), "every sample exactly once"
    offsets = plan.pack_offsets
    assert offsets[0] == 0 and offsets[-1] == len(plan.sample_order)
    assert np.all(np.diff(offsets) >= 1), "no empty packs"
    effective = np.minimum(tokens, max_tokens)
    for p in range(plan.num_packs):
        members = plan.pack(p)
        assert plan.pack_tokens[p] == effective[members].sum() <= max_tokens
        assert plan.pack_tiles[p] == tiles[members].sum()
        if max_tiles is not None:
            assert plan.pack_tiles[p] <= max_tiles
        assert np.all(np.diff(effective[members]) <= 0), "longest sample first within a pack"
    assert np.all(np.diff(plan.pack_tokens) <= 0), "packs ordered by total tokens, descending"
    over_tiles = tiles > max_tiles if max_tiles is not None else np.zeros(len(tokens), dtype=bool)
    over_tokens = tokens > max_tokens
    expected_dropped = over_tiles | (over_tokens if oversize == "drop" else False)
    assert np.array_equal(plan.dropped, np.flatnonzero(expected_dropped))
    by_reason = plan.dropped_by_reason()
    dropped_for_tokens = over_tokens if oversize == "drop" else np.zeros(len(tokens), dtype=bool)
    assert np.array_equal(by_reason[TOO_MANY_TOKENS], np.flatnonzero(dropped_for_tokens))
    if oversize == "truncate":
        assert np.array_equal(plan.truncated, np.flatnonzero(over_tokens & ~over_tiles))
    else:
        assert len(plan.truncated) == 0
    if plan.num_packs:
        assert plan.efficiency == pytest.approx(plan.pack_tokens.sum() / (plan.num_packs * max_tokens))


def naive_best_fit_decreasing(tokens, tiles, max_tokens, max_tiles):
    """Reference BFD by linear scan, one sample at a time: the set of packs (as sets of indices).

    Longest first (more tiles first, then input order); the tightest pack by tokens that also has
    tile room, ties to fewer tiles left (for samples with tiles) and then to the pack touched last.
    """
    order = sorted(range(len(tokens)), key=lambda i: (-tokens[i], -tiles[i], i))
    packs: list[dict] = []
    for stamp, i in enumerate(order):
        length, tile = tokens[i], tiles[i]
        fitting = [p for p in packs if p["room"] >= length and p["tiles_left"] >= tile]
        if fitting:
            best = min(fitting, key=lambda p: (p["room"], p["tiles_left"] if tile else 0, -p["stamp"]))
        else:
            best = {"room": max_tokens, "tiles_left": max_tiles, "members": set()}
            packs.append(best)
        best["room"] -= length
        best["tiles_left"] -= tile
        best["members"].add(i)
        best["stamp"] = stamp
    return {frozenset(p["members"]) for p in packs}


@pytest.mark.parametrize("seed", range(40))
def test_random_plans_are_valid(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 80))
    max_tokens = int(rng.choice([7, 64, 1000]))
    tokens = rng.integers(1, int(max_tokens * 1.3) + 2, n)
    with_tiles = bool(rng.integers(0, 2))
    tiles = rng.integers(0, 6, n) * rng.integers(0, 2, n) if with_tiles else None
    max_tiles = int(rng.integers(0, 9)) if with_tiles and rng.integers(0, 4) else None
    oversize = "truncate" if rng.integers(0, 2) else "drop"
    plan = plan_packs(tokens, tiles, max_tokens, max_tiles, oversize=oversize)
    assert_valid_plan(plan, tokens, tiles, max_tokens, max_tiles, oversize)


@pytest.mark.parametrize("seed", range(6))
def test_matches_reference_best_fit_decreasing(seed):
    rng = np.random.default_rng(100 + seed)
    max_tokens, n = 500, 400
    tokens = np.where(rng.random(n) < 0.5, rng.integers(1, max_tokens + 1, n), rng.integers(1, 40, n))
    tiles = rng.integers(0, 5, n) * (rng.random(n) < 0.6) if seed % 2 else np.zeros(n, dtype=np.int64)
    max_tiles = 8 if seed % 2 else None
    plan = plan_packs(tokens, tiles if seed % 2 else None, max_tokens, max_tiles)
    reference = naive_best_fit_decreasing(tokens.tolist(), tiles.tolist(), max_tokens, max_tiles or 0)
    assert {frozenset(pack.tolist()) for pack in plan.packs} == reference


def test_long_tailed_lengths_pack_within_one_percent_of_the_bound():
    tokens = generate_lengths(5000, "longtail", seed=3)
    plan = plan_packs(tokens, None, 32768, None)
    assert_valid_plan(plan, tokens, None, 32768, None)
    assert plan.efficiency >= 0.99
    assert plan.num_packs <= lower_bound_packs(int(tokens.sum()), 0, 32768, None) * 1.01


def test_items_that_fill_packs_exactly():
    tokens = np.array([20, 12, 20, 12, 16, 16, 20, 12])
    plan = plan_packs(tokens, None, 32, None)
    assert plan.num_packs == 4 and plan.efficiency == 1.0
    assert sorted(sorted(tokens[pack].tolist()) for pack in plan.packs) == [[12, 20]] * 3 + [[16, 16]]
    assert_valid_plan(plan, tokens, None, 32, None)


def test_a_run_of_identical_samples_fills_packs_in_order():
    plan = plan_packs(np.full(1000, 100), None, 1000, None)
    assert plan.num_packs == 100 and plan.efficiency == 1.0
    assert plan.pack(0).tolist() == list(range(10))


def test_tiles_bind_before_tokens():
    plan = plan_packs(np.full(4, 10), np.full(4, 3), 100, 6)
    assert plan.num_packs == 2
    assert plan.pack_tiles.tolist() == [6, 6] and plan.pack_tokens.tolist() == [20, 20]


def test_tightest_pack_without_tile_room_is_skipped():
    # A(60 tok, 4 tiles) leaves room 40 but 1 tile; C(30, 3 tiles) must go with B instead.
    tokens, tiles = np.array([60, 50, 30, 30]), np.array([4, 0, 3, 0])
    plan = plan_packs(tokens, tiles, 100, 5)
    assert [pack.tolist() for pack in plan.packs] == [[0, 3], [1, 2]]
    assert plan.pack_tokens.tolist() == [90, 80] and plan.pack_tiles.tolist() == [4, 3]


def test_tile_totals_are_reported_without_a_tile_cap():
    plan = plan_packs(np.array([10, 10]), np.array([50, 60]), 100, None)
    assert plan.num_packs == 1 and plan.pack_tiles.tolist() == [110]


def test_oversize_drop_reasons():
    tokens, tiles = np.array([50, 200, 10, 300]), np.array([0, 0, 9, 9])
    plan = plan_packs(tokens, tiles, 100, 4)
    assert plan.dropped.tolist() == [1, 2, 3]
    assert plan.dropped_reason.tolist() == [TOO_MANY_TOKENS, TOO_MANY_TILES, TOO_MANY_TOKENS]
    assert [pack.tolist() for pack in plan.packs] == [[0]]


def test_oversize_truncate_keeps_long_samples_at_the_cap():
    tokens, tiles = np.array([50, 200, 10, 300]), np.array([0, 0, 1, 9])
    plan = plan_packs(tokens, tiles, 100, 4, oversize="truncate")
    assert plan.truncated.tolist() == [1]
    assert plan.dropped.tolist() == [3] and plan.dropped_reason.tolist() == [TOO_MANY_TILES]
    assert plan.pack_tokens.tolist() == [100, 60]
    assert_valid_plan(plan, tokens, tiles, 100, 4, oversize="truncate")


def test_deterministic_and_ties_broken_by_opening_order():
    rng = np.random.default_rng(7)
    tokens, tiles = rng.integers(1, 300, 2000), rng.integers(0, 4, 2000)
    first, second = plan_packs(tokens, tiles, 1024, 16), plan_packs(tokens.copy(), tiles.copy(), 1024, 16)
    for field in ("pack_offsets", "sample_order", "pack_tokens", "pack_tiles", "dropped"):
        assert np.array_equal(getattr(first, field), getattr(second, field))
    equal = plan_packs(np.array([5, 5, 5]), None, 5, None)
    assert [pack.tolist() for pack in equal.packs] == [[0], [1], [2]]


def test_empty_input_gives_an_empty_plan():
    plan = plan_packs(np.zeros(0, dtype=np.int64), None, 100, None)
    assert plan.num_packs == 0 and plan.packs == [] and plan.efficiency == 0.0


@pytest.mark.parametrize(
    ("tokens", "tiles", "kwargs", "message"),
    [
        ([0, 5], None, {}, ">= 1 token"),
        ([5, 5], [1, -1], {}, "tile counts"),
        ([5, 5], [1], {}, "entries"),
        ([1.5], None, {}, "integers"),
        ([5], None, {"oversize": "split"}, "oversize"),
    ],
)
def test_invalid_arguments(tokens, tiles, kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan_packs(np.array(tokens), None if tiles is None else np.array(tiles), 10, 4, **kwargs)


# --- benchmark CLI ---------------------------------------------------------------------------


def run_cli(argv, capsys) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_reports_json(tmp_path, capsys):
    lengths = tmp_path / "lengths.txt"
    lengths.write_text("16\n16\n\n20\n12\n40000\n")
    report = run_cli(["--lengths", str(lengths), "--max-seq-len", "32"], capsys)
    for key in ("samples", "packs", "efficiency", "seconds", "dropped", "max_seq_len", "lower_bound_packs"):
        assert key in report
    assert report["samples"] == 5 and report["packs"] == 2 and report["efficiency"] == 1.0
    assert report["dropped"] == 1 and report["dropped_by_reason"][TOO_MANY_TOKENS] == 1
    assert report["lower_bound_packs"] == 2 and report["max_seq_len"] == 32


def test_cli_reads_tiles_and_applies_the_tile_cap(tmp_path, capsys):
    lengths = tmp_path / "lengths.csv"
    lengths.write_text("10,3\n10,3\n10\n10,3\n")
    report = run_cli(["--lengths", str(lengths), "--max-seq-len", "100", "--max-tiles", "6"], capsys)
    assert report["packs"] == 2 and report["tiles"] == 9 and report["max_tiles"] == 6
    tokens, tiles = read_lengths(lengths)
    assert tokens.tolist() == [10, 10, 10, 10] and tiles.tolist() == [3, 3, 0, 3]


def test_cli_generates_a_reproducible_file_and_plots(tmp_path, capsys):
    first, second, png = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "fill.png"
    argv = ["--generate", "2000", "--distribution", "longtail", "--seed", "5"]
    report = run_cli([*argv, "--write", str(first), "--plot", str(png)], capsys)
    run_cli([*argv, "--write", str(second)], capsys)
    assert first.read_text() == second.read_text()
    values = [int(line) for line in first.read_text().split()]
    assert len(values) == 2000 and 200 <= min(values) and max(values) <= 32768
    assert report["samples"] == 2000 and report["distribution"] == "longtail" and report["seed"] == 5
    assert png.stat().st_size > 0


@pytest.mark.parametrize(
    ("content", "where"),
    [("12\n7\nseven\n", ":3:"), ("12\n-4\n", ":2:"), ("5,1,2\n", ":1:"), ("5,-1\n", ":1:"), ("0\n", ":1:")],
)
def test_bad_lines_name_the_file_and_line(tmp_path, content, where):
    lengths = tmp_path / "bad.txt"
    lengths.write_text(content)
    with pytest.raises(UserError, match=f"{lengths}{where}"):
        main(["--lengths", str(lengths)])


def test_empty_file_and_missing_file_are_user_errors(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(UserError, match=f"{empty}: empty file"):
        main(["--lengths", str(empty)])
    assert profile_main(["packing", "--lengths", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err


def test_help_lists_every_option_with_its_meaning_and_default(capsys):
    """Old behaviour: --oversize, --distribution and --seed had no description and no default shown."""
    import re

    from sophia_tools.bench import packing

    with pytest.raises(SystemExit) as done:
        packing.main(["--help"])
    assert done.value.code == 0
    entries: dict[str, str] = {}
    for line in capsys.readouterr().out.splitlines():
        match = re.match(r"^  (?:-h, )?(--[\w-]+)", line)
        if match:
            option = match.group(1)
            entries[option] = line
        elif line.startswith("   ") and entries:
            entries[option] += " " + line.strip()
    options = {"--lengths", "--max-seq-len", "--max-tiles", "--oversize", "--generate", "--distribution", "--seed",
               "--write", "--plot"}
    assert set(entries) == options | {"--help"}
    for option in options:
        description = " ".join(entries[option].split()).split(" ", 2)[-1]
        assert re.search(r"[a-z]{3,} [a-z]{3,}", description), f"{option} has no description: {entries[option]}"
        assert "(default: " in description, f"{option} shows no default: {entries[option]}"
