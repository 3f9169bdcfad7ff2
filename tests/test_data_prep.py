"""data_prep/ scripts for real datasets: Cityscapes train-id files and KITTI ImageSets."""
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hrnas.data import make_dataset

SCRIPTS = Path(__file__).resolve().parents[1] / "data_prep"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    base = tmp_path_factory.mktemp("prep")
    return {name: make_dataset(name, base / name, preset="smoke", seed=0, progress=False) for name in ("cityscapes", "kitti")}


def test_cityscapes_train_ids_script(smoke, tmp_path, capsys):
    main = _script("cityscapes_train_ids")
    root = tmp_path / "cs"
    shutil.copytree(smoke["cityscapes"], root)
    originals = sorted(root.glob("gtFine/*/*/*_labelTrainIds.png"))
    for p in originals:
        p.unlink()
    assert main([str(root)]) == 0
    assert "wrote 6 " in capsys.readouterr().out
    for p in originals:  # same pixels as the generator's own train-id files
        expected = np.asarray(Image.open(smoke["cityscapes"] / p.relative_to(root)))
        assert np.array_equal(np.asarray(Image.open(p)), expected)
    assert main([str(root)]) == 0 and "wrote 0 " in capsys.readouterr().out  # existing files are kept
    assert main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "missing" / "gtFine") in err and err.count("\n") == 1


def test_kitti_splits_script(smoke, tmp_path, capsys):
    main = _script("kitti_splits")
    root = tmp_path / "kitti"
    shutil.copytree(smoke["kitti"], root)
    shutil.rmtree(root / "ImageSets")
    (tmp_path / "train.txt").write_text("000000\n000002\n000004\n")
    (tmp_path / "val.txt").write_text("000001\n000003\n")
    assert main([str(root), "--train", str(tmp_path / "train.txt"), "--val", str(tmp_path / "val.txt")]) == 0
    assert (root / "ImageSets" / "train.txt").read_text() == "000000\n000002\n000004\n"
    assert (root / "ImageSets" / "trainval.txt").read_text().split() == [f"{i:06d}" for i in range(5)]
    capsys.readouterr()
    assert main([str(root), "--train", str(tmp_path / "train.txt"), "--val", str(tmp_path / "val.txt"),
                 "--expect-standard"]) == 2
    assert "3712" in capsys.readouterr().err
    (tmp_path / "val.txt").write_text("000001\n000002\n")
    assert main([str(root), "--train", str(tmp_path / "train.txt"), "--val", str(tmp_path / "val.txt")]) == 2
    assert "share 1 frames, e.g. 000002" in capsys.readouterr().err
    (tmp_path / "val.txt").write_text("000009\n")
    assert main([str(root), "--train", str(tmp_path / "train.txt"), "--val", str(tmp_path / "val.txt")]) == 2
    assert "000009.bin" in capsys.readouterr().err
    assert main([str(root), "--val-fraction", "0.5", "--seed", "1"]) == 0
    train = (root / "ImageSets" / "train.txt").read_text().split()
    val = (root / "ImageSets" / "val.txt").read_text().split()
    assert len(train) == 3 and len(val) == 3 and not set(train) & set(val)
    assert sorted(train + val) == [f"{i:06d}" for i in range(6)]
