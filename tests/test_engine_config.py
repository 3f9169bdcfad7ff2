"""Recipes: presets load, overrides parse and are type-checked, switches are documented."""
import re
from pathlib import Path

import pytest

from hrnas import TASKS
from hrnas.engine.config import PRESETS, flatten, load_config, parse_override
from hrnas.errors import UserError

SWITCHES_MD = Path(__file__).resolve().parents[1] / "docs" / "switches.md"


@pytest.mark.parametrize("task", TASKS)
def test_every_preset_loads_with_the_same_keys(task):
    cfgs = {p: load_config(task, p) for p in PRESETS}
    keys = {p: set(flatten(c)) for p, c in cfgs.items()}
    assert keys["paper"] == keys["tiny"] == keys["smoke"]
    assert cfgs["smoke"]["train"]["epochs"] <= 2 and cfgs["smoke"]["preset"] == "smoke"
    assert cfgs["tiny"]["train"]["epochs"] <= 12 < cfgs["paper"]["train"]["epochs"]
    assert cfgs["paper"]["task"] == task and cfgs["paper"]["search"]["rho"] > 0


def test_paper_recipes_hold_the_supplement_numbers():
    c = load_config("imagenet", "paper")
    assert (c["optim"]["name"], c["optim"]["lr"], c["data"]["batch_size"], c["train"]["epochs"]) == \
        ("rmsprop_tf", 0.064, 1024, 350)
    assert (c["sched"]["gamma"], c["sched"]["decay_epochs"], c["ema"]["decay"]) == (0.97, 2.4, 0.9999)
    assert (c["loss"]["label_smoothing"], c["model"]["dropout"], c["search"]["rho"]) == (0.1, 0.2, 1.8e-4)
    assert load_config("imagenet", "paper", ["search.variant=B"])["search"]["rho"] == 1.2e-4
    c = load_config("cityscapes", "paper")
    assert (c["optim"]["lr"], c["optim"]["eps"], c["data"]["batch_size"], c["train"]["epochs"]) == \
        (0.04, 1e-3, 32, 430)
    assert c["data"]["crop_size"] == [512, 1024] and c["search"]["rho"] == 1.6e-4
    assert load_config("cityscapes", "paper", ["search.lambda_source=code"])["search"]["rho"] == 1.4e-4
    c = load_config("coco", "paper")
    assert (c["optim"]["name"], c["optim"]["lr"], c["sched"]["milestones"], c["train"]["epochs"]) == \
        ("adam", 1e-3, [170, 200], 210)
    assert (c["data"]["batch_size"], c["data"]["input_size"], c["search"]["rho"]) == (384, [256, 192], 1e-6)
    c = load_config("kitti", "paper")
    assert (c["optim"]["lr"], c["optim"]["weight_decay"], c["optim"]["decay_mode"]) == (2e-3, 1e-2, "decoupled")
    assert (c["data"]["batch_size"], c["train"]["epochs"]) == (16, 80)
    c = load_config("ade20k", "paper")
    assert (c["data"]["batch_size"], c["train"]["epochs"], c["data"]["crop_size"]) == (64, 200, [512, 512])
    assert (c["search"]["threshold"], c["search"]["min_removable_macs"], c["eval"]["bn_calib_batches"]) == \
        (1e-3, 1e6, 10)


def test_overrides_parse_and_coerce():
    c = load_config("cityscapes", "tiny", ["optim.lr=0.01", "train.epochs=3", "search.rho=1e-4",
                                            "data.crop_size=[64, 128]", "ema.warmup_cap=false",
                                            "optim.weight_decay=0", "train.grad_clip=5"])
    assert c["optim"]["lr"] == 0.01 and c["train"]["epochs"] == 3
    assert c["search"]["rho"] == 1e-4 and isinstance(c["search"]["rho"], float)
    assert c["data"]["crop_size"] == [64, 128] and c["ema"]["warmup_cap"] is False
    assert c["optim"]["weight_decay"] == 0.0 and isinstance(c["optim"]["weight_decay"], float)
    assert c["train"]["grad_clip"] == 5.0
    assert parse_override("a.b=x=y") == ("a.b", "x=y")


@pytest.mark.parametrize("override, pattern", [
    ("optim.lrr=1", r"unknown key 'optim.lrr'; accepted: .*optim.lr,"),
    ("nosuch.key=1", r"unknown key 'nosuch.key'; accepted: .*optim"),
    ("train.epochs=abc", r"train.epochs='abc' has the wrong type; expected an integer"),
    ("train.epochs=2.5", r"train.epochs=2.5 .*expected an integer"),
    ("optim.lr=fast", r"optim.lr='fast' .*expected a number"),
    ("ema.enabled=1", r"ema.enabled=1 .*expected a boolean"),
    ("data.crop_size=64", r"data.crop_size=64 .*expected a list"),
    ("data.crop_size=[64, 1.5]", r"data.crop_size\[1\]=1.5 .*integer"),
    ("optim.decay_mode=coupled", r"optim.decay_mode='coupled' is not one of l2, decoupled"),
    ("search.cost_size=512", r"search.cost_size=512 is not one of 224, task"),
    ("optim=1", r"optim is a section, set one of its keys: .*optim.lr"),
    ("optim.lr", r"not of the form key=value"),
    ("optim.lr=[1", r"override optim.lr: invalid YAML"),
    ("train.epochs=", r"train.epochs cannot be null"),
])
def test_bad_overrides_raise_user_error(override, pattern):
    with pytest.raises(UserError, match=pattern) as err:
        load_config("cityscapes", "smoke", [override])
    assert "\n" not in str(err.value)


def test_bad_task_preset_and_missing_lambda():
    with pytest.raises(UserError, match="unknown task 'mnist'; accepted: imagenet"):
        load_config("mnist")
    with pytest.raises(UserError, match="unknown preset 'huge'; accepted: paper, tiny, smoke"):
        load_config("coco", "huge")
    with pytest.raises(UserError, match="search.lambda_source=code has no λ for variant B"):
        load_config("coco", "paper", ["search.lambda_source=code", "search.variant=B"])
    # disabling the search does not need a λ
    assert load_config("coco", "paper", ["search.lambda_source=code", "search.variant=B",
                                         "search.enabled=false"])["search"]["rho"] is None


def test_every_documented_switch_exists_and_every_marked_default_is_documented():
    text = SWITCHES_MD.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    documented = {re.match(r"\| `([\w.]+)`", r).group(1) for r in rows}
    assert len(documented) == len(rows) >= 20
    all_keys = set()
    for task in TASKS:
        all_keys |= set(flatten(load_config(task, "paper")))
    assert documented <= all_keys, documented - all_keys
    marked = set()
    for name in ["defaults"] + list(TASKS):
        path = Path(__file__).resolve().parents[1] / "hrnas" / "configs" / f"{name}.yaml"
        section = None
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.match(r"^\w", line):
                section = None if name != "defaults" else line.split(":")[0]
            elif name != "defaults" and re.match(r"^  \w+:", line):
                section = line.split(":")[0].strip()
            m = re.match(r"^\s+(\w+):.*# \[switch\]", line)
            if m and section:
                marked.add(f"{section}.{m.group(1)}")
    assert marked and marked <= documented, marked - documented


def test_amp_and_sync_bn_switches():
    cfg = load_config("cityscapes", "paper")
    assert cfg["train"]["amp"] == "none" and cfg["train"]["sync_bn"] is False  # the authors': fp32, per-GPU BN
    for value in ("fp16", "bf16", "none"):
        assert load_config("cityscapes", "smoke", [f"train.amp={value}"])["train"]["amp"] == value
    assert load_config("coco", "smoke", ["train.sync_bn=true"])["train"]["sync_bn"] is True
    for override, pattern in [("train.amp=true", r"train.amp=True is not one of none, fp16, bf16"),
                              ("train.amp=fp8", r"train.amp='fp8' is not one of none, fp16, bf16"),
                              ("train.sync_bn=yes please", r"train.sync_bn='yes please' has the wrong type"),
                              ("train.sync_bn=1", r"train.sync_bn=1 has the wrong type; expected a boolean")]:
        with pytest.raises(UserError, match=pattern):
            load_config("cityscapes", "smoke", [override])


def test_task_presets_and_the_retrain_recipe():
    from hrnas.engine.config import presets_of

    assert presets_of("imagenet") == ("paper", "tiny", "smoke", "paper-retrain")
    assert presets_of("cityscapes") == ("paper", "tiny", "smoke")
    cfg = load_config("imagenet", "paper-retrain")
    m = cfg["model"]
    assert (m["act"], m["se_ratio"], m["se_on"], m["se_placement"], m["dropout"]) == \
        ("swish", 0.5, "hidden", "res+down", 0.28)
    assert cfg["search"]["enabled"] is False and cfg["data"]["randaugment"] is None
    assert cfg["data"]["batch_size"] == 2048 and cfg["optim"]["lr"] == pytest.approx(0.016 * 2048 / 256)
    assert cfg["optim"]["name"] == "rmsprop_tf" and cfg["train"]["epochs"] == 350  # the rest is `paper`'s
    with pytest.raises(UserError, match=r"unknown preset 'paper-retrain'; accepted: paper, tiny, smoke"):
        load_config("cityscapes", "paper-retrain")
    assert load_config("imagenet", "paper-retrain", ["data.randaugment=[2, 12]"])["data"]["randaugment"] == [2, 12]
