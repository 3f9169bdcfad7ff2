"""ModelEMA: batch-adjusted decay, (1+t)/(10+t) cap, buffers, copies, persistence."""
import pytest
import torch
from torch import nn

from hrnas.engine.ema import ModelEMA


def _net(w: float):
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1))
    with torch.no_grad():
        net[0].weight.fill_(w)
        net[1].running_mean.fill_(w)
    return net


def _set(net, w: float):
    with torch.no_grad():
        net[0].weight.fill_(w)
        net[1].running_mean.fill_(w)
        net[1].num_batches_tracked.fill_(int(w))


def test_effective_decay_is_batch_adjusted():
    assert ModelEMA(_net(0), 0.9999, batch_size=1024).decay == pytest.approx(0.999975, abs=1e-7)
    assert ModelEMA(_net(0), 0.9999, batch_size=32).decay == pytest.approx(0.99999922, abs=1e-8)
    assert ModelEMA(_net(0), 0.9999).decay == 0.9999  # no batch given: plain decay (paper)


def test_update_with_warmup_cap_hand_computed():
    net = _net(0.0)
    ema = ModelEMA(net, decay=0.9999, batch_size=32)
    _set(net, 11.0)
    d1 = ema.update(net)
    assert d1 == pytest.approx(2 / 11)  # t = 1: (1+1)/(10+1)
    # shadow = d*0 + (1-d)*11 = 9
    assert ema.shadow["0.weight"].item() == pytest.approx(9.0)
    assert ema.shadow["1.running_mean"].item() == pytest.approx(9.0)  # BN buffers averaged too
    assert ema.shadow["1.num_batches_tracked"].item() == 11  # ints copied
    _set(net, 1.0)
    assert ema.update(net) == pytest.approx(0.25)  # t = 2: 3/12
    assert ema.shadow["0.weight"].item() == pytest.approx(0.25 * 9.0 + 0.75 * 1.0)


def test_update_without_cap_uses_decay():
    net = _net(1.0)
    ema = ModelEMA(net, decay=0.5, warmup_cap=False)
    _set(net, 3.0)
    assert ema.update(net) == 0.5
    assert ema.shadow["0.weight"].item() == pytest.approx(2.0)


def test_copy_to_and_unwrap():
    net = _net(2.0)
    ema = ModelEMA(nn.DataParallel(net), decay=0.5, warmup_cap=False)  # wrapper is unwrapped
    assert "0.weight" in ema.shadow
    _set(net, 4.0)
    ema.update(net)
    assert net[0].weight.item() == 4.0
    ema.copy_to(nn.DataParallel(net))  # the wrapper is unwrapped here too
    assert net[0].weight.item() == pytest.approx(3.0)


def test_state_dict_round_trip_and_key_check():
    net = _net(1.0)
    ema = ModelEMA(net, decay=0.9, batch_size=64)
    ema.update(net)
    other = ModelEMA(_net(0.0))
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 1 and other.decay == ema.decay
    assert torch.equal(other.shadow["0.weight"], ema.shadow["0.weight"])
    other.shadow["lin.weight"] = other.shadow.pop("0.weight")  # a shadow the model does not have
    with pytest.raises(KeyError, match="differ"):
        other.update(net)


def test_from_config_follows_the_switches():
    from hrnas.engine.config import load_config

    ema = ModelEMA.from_config(_net(0), load_config("imagenet", "paper"))
    assert ema.decay == pytest.approx(0.999975, abs=1e-7) and ema.warmup_cap
    ema = ModelEMA.from_config(_net(0), load_config("imagenet", "paper",
                                                    ["ema.batch_adjust=false", "ema.warmup_cap=false"]))
    assert ema.decay == 0.9999 and ema.current_decay() == 0.9999


def test_update_of_many_tensors_equals_the_formula_bit_for_bit():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    ema = ModelEMA(net, decay=0.99, warmup_cap=False)
    expected = {k: v.detach().clone() for k, v in net.state_dict().items()}
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            net[1].running_var.mul_(1.5)
            net[1].num_batches_tracked.add_(1)
        ema.update(net)
        for k, v in net.state_dict().items():
            expected[k] = expected[k].mul(0.99).add(v, alpha=0.01) if v.is_floating_point() else v.clone()
    for k, v in ema.shadow.items():
        assert torch.equal(v, expected[k]), k
    assert int(ema.shadow["1.num_batches_tracked"]) == 3


def test_update_follows_edits_of_the_shadow_and_refresh():
    """update() keeps its tensor lists between calls; a shrink-like edit of the shadow (a slice replacing
    an entry) is seen at once, and refresh() picks up model tensors replaced by other objects."""
    net = nn.Sequential(nn.Linear(3, 2, bias=False), nn.BatchNorm1d(2))
    ema = ModelEMA(net, decay=0.5, warmup_cap=False)
    with torch.no_grad():
        net[0].weight.fill_(2.0)
    start = ema.shadow["0.weight"].clone()
    ema.update(net)
    assert torch.allclose(ema.shadow["0.weight"], 0.5 * start + 1.0)
    before = ema.shadow["0.weight"].clone()
    # a shrink keeps the first output row: the parameter's data and the shadow entry are sliced
    with torch.no_grad():
        net[0].weight.data = net[0].weight.data[:1].clone()
        net[0].weight.fill_(4.0)
    ema.shadow["0.weight"] = before[:1].clone()
    for name in ("weight", "bias", "running_mean", "running_var"):
        ema.shadow[f"1.{name}"] = ema.shadow[f"1.{name}"][:1].clone()
    net[1] = nn.BatchNorm1d(1)
    ema.refresh()
    ema.update(net)
    assert ema.shadow["0.weight"].shape == (1, 3)
    assert torch.allclose(ema.shadow["0.weight"], 0.5 * before[:1] + 0.5 * 4.0)
    # a model tensor replaced by another object: refresh() makes update() average the new one
    net[1].running_mean = torch.full((1,), 8.0)
    ema.refresh()
    old = ema.shadow["1.running_mean"].clone()
    ema.update(net)
    assert torch.allclose(ema.shadow["1.running_mean"], 0.5 * old + 4.0)
