"""sophia_common.atomic: outputs appear whole or not at all, and temporaries of dead writers are cleaned."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sophia_common.atomic import atomic_path, publish_dir, remove_stale_temps, temp_dir_for, write_text_atomic


def test_a_failed_write_leaves_neither_the_file_nor_its_temporary(tmp_path):
    target = tmp_path / "stats.json"
    with pytest.raises(RuntimeError), atomic_path(target) as temp:
        temp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []
    write_text_atomic(target, "whole")
    assert target.read_text() == "whole" and list(tmp_path.iterdir()) == [target]


def test_publish_dir_refuses_replaces_and_restores_on_failure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    temp = temp_dir_for(out)
    (temp / "new.txt").write_text("new")
    with pytest.raises(FileExistsError):
        publish_dir(temp, out)
    publish_dir(temp, out, replace=True)
    assert [p.name for p in out.iterdir()] == ["new.txt"] and not temp.exists()
    # A publish whose rename fails (here: the temporary vanished) puts the previous output back.
    with pytest.raises(OSError):
        publish_dir(tmp_path / "out.tmp-missing", out, replace=True)
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_only_temporaries_of_dead_writers_are_removed(tmp_path):
    out = tmp_path / "ckpt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    (tmp_path / f"ckpt.tmp-{dead}").mkdir()
    (tmp_path / f"ckpt.tmp-{os.getpid()}").mkdir()
    (tmp_path / "other.tmp-1").mkdir()
    removed = remove_stale_temps(out)
    assert [p.name for p in removed] == [f"ckpt.tmp-{dead}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ckpt.tmp-{os.getpid()}", "other.tmp-1"]
