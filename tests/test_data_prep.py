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


def _authors_format(spec):
    """The authors' checkpoint.json list for an hrnas spec (their block order = ours)."""
    return [[b["oup"], 1, b["stride"], b["kernels"], b["hidden"], True] for b in spec["blocks"]]


def test_convert_hrnas_checkpoint(tmp_path, capsys):
    import json

    from hrnas.models import build_model, load_arch

    spec_cls = importlib.util.spec_from_file_location("convert", SCRIPTS / "convert_hrnas_checkpoint.py")
    conv = importlib.util.module_from_spec(spec_cls)
    spec_cls.loader.exec_module(conv)
    # their module paths map to our construction order, for both heads
    for task, count in (("imagenet", 67), ("cityscapes", 61)):
        names = conv.block_names(task)
        assert len(names) == count
        assert [ours for _, ours in names] == list(build_model(task, expand_ratio=1).block_order)
    theirs = dict(conv.block_names("imagenet"))
    assert theirs["features.4.fuse_layers.1.0.0"] == "fuse2.1_0" and theirs["features.4.fuse_layers.2.0"] == "fuse2.new2"
    assert theirs["features.10.downsamp_modules.2"] == "head.down2"
    # the shipped architecture is the conversion of the authors' file
    shipped = load_arch("hrnas-a-imagenet")
    source = tmp_path / "checkpoint.json"
    source.write_text(json.dumps(_authors_format(shipped)))
    out = tmp_path / "arch.json"
    assert conv.main([str(source), "--out", str(out)]) == 0
    assert "67 blocks, 9 reduced to their shortcut" in capsys.readouterr().out
    assert json.loads(out.read_text())["blocks"] == shipped["blocks"]
    bad = _authors_format(shipped)
    bad[3][0] = 40  # fuse1.new1 is 18 -> 36
    source.write_text(json.dumps(bad))
    assert conv.main([str(source), "--out", str(out)]) == 2
    assert "entry 3 (features.2.fuse_layers.1.0): output_dim 40, stride 2, but our block fuse1.new1 has 36, 2" \
        in capsys.readouterr().err
    source.write_text(json.dumps(bad[:60]))
    assert conv.main([str(source), "--out", str(out)]) == 2
    assert "expected a list of 67 block entries for imagenet, got 60" in capsys.readouterr().err
