"""Atomic writes (hrnas.io): the final file appears whole or not at all, and no temp file is left."""
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from hrnas.io import atomic_directory, atomic_path, atomic_write_json, atomic_write_text


def test_overwrite_leaves_only_the_final_file(tmp_path):
    atomic_write_text(tmp_path / "sub" / "a.txt", "one")
    atomic_write_text(tmp_path / "sub" / "a.txt", "two\r\n")
    assert (tmp_path / "sub" / "a.txt").read_bytes() == b"two\r\n"  # no newline translation
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.txt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target, fsync=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_json_understands_numpy_tensors_paths_and_tuples(tmp_path):
    obj = {"a": np.float32(0.5), "b": torch.tensor([1, 2]), "c": Path("x/y"), "d": (3, 4), "e": np.int64(7)}
    atomic_write_json(tmp_path / "r.json", obj)
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 0.5, "b": [1, 2], "c": "x/y", "d": [3, 4], "e": 7}
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        atomic_write_json(tmp_path / "bad.json", {"o": object()})
    assert not (tmp_path / "bad.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_atomic_directory_renames_on_success_and_cleans_up_on_error(tmp_path):
    with atomic_directory(tmp_path / "data") as d:
        (d / "f.txt").write_text("x")
    assert (tmp_path / "data" / "f.txt").read_text() == "x"
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        with atomic_directory(tmp_path / "data") as d:
            (d / "g.txt").write_text("y")
    with pytest.raises(ValueError):
        with atomic_directory(tmp_path / "other") as d:
            raise ValueError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_get_the_umask_modes_of_a_plain_open(tmp_path, umask_022):
    """Not tempfile's private 0600 / 0700: under umask 022 a figure, a checkpoint and a table are 0644,
    an atomically created folder 0755 (what open() / mkdir() give)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hrnas.engine.checkpoint import save_checkpoint
    from hrnas.viz.plots import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png = save_figure(fig, tmp_path / "figs" / "curve.png")
    plt.close(fig)
    ckpt = save_checkpoint(tmp_path / "run" / "ckpt_000000001.pt", step=1, model={"w": torch.ones(2)})
    table = atomic_write_text(tmp_path / "t.csv", "a,b\n1,2\n")
    with open(tmp_path / "plain.txt", "w") as fh:  # the reference: a normal open() in the same folder
        fh.write("x")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name: _mode(p) for p in (png, ckpt, table)} == {p.name: 0o644 for p in (png, ckpt, table)}
    assert _mode(tmp_path / "plain.txt") == 0o644
    with atomic_directory(tmp_path / "data") as d:
        (d / "f.txt").write_text("x")
    assert _mode(tmp_path / "data") == 0o755
    os.umask(0o077)  # a stricter umask is obeyed as well
    assert _mode(atomic_write_text(tmp_path / "private.txt", "x")) == 0o600
