"""RMSpropTF against hand-computed updates, optimizer building, coupled L2, state remapping."""
import math

import pytest
import torch
from torch import nn

from hrnas.engine.ema import ModelEMA
from hrnas.engine.optim import (CoupledL2, RMSpropTF, build_optimizer, decay_param_groups, drop_optimizer_param,
                                l2_penalty, optimizer_kwargs, slice_optimizer_state)
from hrnas.errors import UserError


def _step(opt, p, grad):
    p.grad = torch.tensor(grad, dtype=torch.float64)
    opt.step()


def test_rmsprop_tf_two_steps_hand_computed():
    # lr .1, alpha .9, eps 1e-3 (inside the sqrt), momentum .9, square_avg starts at 0.
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = RMSpropTF([p], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9)
    _step(opt, p, [0.5, 1.0])
    # sq = 0.1*g² = [0.025, 0.1]; buf = g/sqrt(sq+1e-3) = [0.5/sqrt(0.026), 1/sqrt(0.101)]
    assert opt.state[p]["square_avg"].tolist() == pytest.approx([0.025, 0.1])
    assert opt.state[p]["momentum_buffer"].tolist() == pytest.approx([3.1008683647, 3.1465838776])
    assert p.tolist() == pytest.approx([0.6899131635, -2.3146583878])
    _step(opt, p, [0.1, -0.2])
    # sq = 0.9*sq + 0.1*g² = [0.0235, 0.094]; buf = 0.9*buf + g/sqrt(sq+1e-3)
    assert opt.state[p]["square_avg"].tolist() == pytest.approx([0.0235, 0.094])
    assert opt.state[p]["momentum_buffer"].tolist() == pytest.approx([3.4296580933, 2.1830398054])
    assert p.tolist() == pytest.approx([0.3469473542, -2.5329623683])
    assert opt.state[p]["step"] == 2


def test_rmsprop_tf_no_momentum_with_coupled_decay():
    p = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    opt = RMSpropTF([p], lr=0.1, momentum=0.0, weight_decay=0.1)
    _step(opt, p, [0.5])
    # g = 0.5 + 0.1*1 = 0.6; sq = 0.1*0.36 = 0.036; p = 1 - 0.1*0.6/sqrt(0.037)
    assert p.item() == pytest.approx(1 - 0.06 / math.sqrt(0.037))
    assert "momentum_buffer" not in opt.state[p]


def test_build_optimizer_decay_modes():
    p = nn.Parameter(torch.ones(1))
    opt = build_optimizer("adamw", [p], lr=0.1, weight_decay=0.01, decay_mode="l2", eps=1e-3)
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["weight_decay"] == 0.0
    p.grad = torch.zeros(1)
    opt.step()
    assert p.item() == 1.0  # the decay lives in the loss (l2_penalty), not in the optimizer
    q = nn.Parameter(torch.ones(1))
    opt = build_optimizer("adamw", [q], lr=0.1, weight_decay=0.01, decay_mode="decoupled")
    assert type(opt) is torch.optim.AdamW
    q.grad = torch.zeros(1)
    opt.step()
    assert q.item() == pytest.approx(1 - 0.1 * 0.01)  # decoupled: p -= lr*wd*p
    assert isinstance(build_optimizer("rmsprop_tf", [q], 0.1, 0.0, alpha=0.9), RMSpropTF)
    assert type(build_optimizer("sgd", [q], 0.1, 0.0, momentum=0.9)) is torch.optim.SGD


def test_build_optimizer_errors():
    p = [nn.Parameter(torch.ones(1))]
    with pytest.raises(UserError, match="optim.name='lion'"):
        build_optimizer("lion", p, 0.1, 0.0)
    with pytest.raises(UserError, match="decoupled.*adamw"):
        build_optimizer("rmsprop_tf", p, 0.1, 1e-5, decay_mode="decoupled")
    with pytest.raises(UserError, match="alpha"):
        build_optimizer("adam", p, 0.1, 0.0, alpha=0.9)
    with pytest.raises(UserError, match="optim.decay_mode='coupled'"):
        build_optimizer("adam", p, 0.1, 0.0, decay_mode="coupled")


def test_optimizer_kwargs_pick_relevant_keys():
    cfg = {"eps": 1e-3, "betas": [0.9, 0.999], "alpha": 0.9, "momentum": 0.9, "nesterov": False}
    assert optimizer_kwargs("adamw", cfg) == {"betas": (0.9, 0.999), "eps": 1e-3}
    assert optimizer_kwargs("rmsprop_tf", cfg) == {"alpha": 0.9, "eps": 1e-3, "momentum": 0.9}


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1)
        self.bn = nn.BatchNorm2d(2)
        self.classifier = nn.Linear(2, 1)


def test_l2_penalty_and_groups_follow_the_mnas_rule():
    net = _Net()
    with torch.no_grad():
        net.conv.weight.fill_(1.0)        # 2 elements -> 2   (4-D: decayed)
        net.conv.bias.fill_(5.0)          # 1-D, not classifier: exempt
        net.bn.weight.fill_(3.0)          # BN: exempt
        net.classifier.weight.fill_(2.0)  # 2 elements -> 8
        net.classifier.bias.fill_(1.0)    # classifier bias -> 1
    assert l2_penalty(net, 0.1).item() == pytest.approx(0.5 * 0.1 * 11.0)
    decay, no_decay = decay_param_groups(net, 0.1)
    assert {id(p) for p in decay["params"]} == {id(net.conv.weight), id(net.classifier.weight),
                                                 id(net.classifier.bias)}
    assert len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0
    opt = build_optimizer("adam", [decay, no_decay], 0.1, 0.1, decay_mode="l2")
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.0]


def test_l2_gradient_equals_the_gradient_of_the_loss_term():
    """CoupledL2.add_gradient gives what backpropagating l2_penalty gives (with and without a task gradient, and
    to a decayed parameter that the task loss does not reach), and its value is the penalty's value."""
    torch.manual_seed(0)
    net = _Net()
    x = torch.randn(3, 1, 4, 4)
    for with_task in (True, False):
        ref, fast = _Net(), _Net()
        ref.load_state_dict(net.state_dict())
        fast.load_state_dict(net.state_dict())
        loss_ref = l2_penalty(ref, 0.1)
        if with_task:
            loss_ref = loss_ref + ref.conv(x).square().mean()
            fast.conv(x).square().mean().backward()
        loss_ref.backward()
        CoupledL2(fast, 0.1).add_gradient()
        for (name, a), b in zip(ref.named_parameters(), fast.parameters()):
            if a.grad is None:
                assert b.grad is None, name
            else:
                assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-7), name
    assert fast.classifier.weight.grad is not None  # no task gradient there: the L2 term alone
    l2 = CoupledL2(net, 0.1)
    assert l2.value().item() == pytest.approx(l2_penalty(net, 0.1).item(), rel=1e-6)
    assert [id(p) for p in l2.params()] == [id(net.conv.weight), id(net.classifier.weight), id(net.classifier.bias)]
    net.classifier = nn.Linear(2, 3)  # an edited network: the kept list is rebuilt after refresh()
    l2.refresh()
    assert id(net.classifier.weight) in {id(p) for p in l2.params()}


def _pruned_net_setup(opt_name):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    opt = build_optimizer(opt_name, net.parameters(), 0.01, 0.0)
    ema = ModelEMA(net, decay=0.9)
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(2, 3, 5, 5)).square().mean().backward()
        opt.step()
        ema.update(net)
    return net, opt, ema


@pytest.mark.parametrize("opt_name", ["adam", "rmsprop_tf"])
def test_slice_state_after_channel_removal(opt_name):
    net, opt, ema = _pruned_net_setup(opt_name)
    keep = torch.tensor([0, 2])
    conv1, bn, conv2 = net[0], net[1], net[2]
    old_w = conv1.weight
    key = "exp_avg" if opt_name == "adam" else "square_avg"
    old_state = opt.state[old_w][key].clone()
    old_conv2_state = opt.state[conv2.weight][key].clone()
    # the shrink's way: the same Parameters with .data replaced (rows = output channels, conv2: dim 1)
    for param in (conv1.weight, conv1.bias, bn.weight, bn.bias):
        param.data = param.data[keep].clone()
        slice_optimizer_state(opt, param, keep, dim=0)
    bn.running_mean = bn.running_mean[keep].clone()
    bn.running_var = bn.running_var[keep].clone()
    conv2.weight.data = conv2.weight.data[:, keep].clone()
    slice_optimizer_state(opt, conv2.weight, keep, dim=1)
    for name, dim in (("0.weight", 0), ("0.bias", 0), ("1.weight", 0), ("1.bias", 0),
                      ("1.running_mean", 0), ("1.running_var", 0), ("2.weight", 1)):
        ema.shadow[name] = ema.shadow[name].index_select(dim, keep)

    assert conv1.weight is old_w and len(opt.state) == 6  # the same Parameter objects, no state lost
    assert opt.state[conv1.weight][key].shape == (2, 3, 1, 1)
    assert torch.equal(opt.state[conv1.weight][key], old_state[keep])
    assert torch.equal(opt.state[conv2.weight][key], old_conv2_state[:, keep])
    assert ema.shadow["2.weight"].shape == (2, 2, 1, 1) and ema.shadow["1.running_var"].shape == (2,)
    # a following step runs with the new shapes
    opt.zero_grad()
    out = net(torch.randn(2, 3, 5, 5))
    assert out.shape == (2, 2, 5, 5)
    out.square().mean().backward()
    opt.step()
    ema.update(net)
    assert {p.shape for p in opt.param_groups[0]["params"]} >= {(2, 3, 1, 1), (2, 2, 1, 1)}


def test_slice_rejects_inconsistent_shapes_and_drop_removes_param():
    net, opt, _ = _pruned_net_setup("adam")
    old = net[0].weight
    with pytest.raises(ValueError, match="index has 3"):
        slice_optimizer_state(opt, old, torch.tensor([0, 1, 2]), 0)  # 4 rows, 3 kept: data not sliced yet
    with pytest.raises(ValueError, match="empty index"):
        slice_optimizer_state(opt, old, torch.tensor([], dtype=torch.long), 0)
    drop_optimizer_param(opt, old)
    assert old not in opt.state and all(p is not old for p in opt.param_groups[0]["params"])


def test_build_optimizer_from_config():
    from hrnas.engine.config import load_config
    from hrnas.engine.optim import build_optimizer_from_config

    net = _Net()
    opt = build_optimizer_from_config(net, load_config("imagenet", "paper"))
    g = opt.param_groups[0]
    assert isinstance(opt, RMSpropTF)
    assert (g["lr"], g["alpha"], g["eps"], g["momentum"], g["weight_decay"]) == (0.064, 0.9, 1e-3, 0.9, 0.0)
    opt = build_optimizer_from_config(net, load_config("kitti", "paper"))
    assert type(opt) is torch.optim.AdamW
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-2, 0.0]
    opt = build_optimizer_from_config(net, load_config("cityscapes", "paper"))
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["eps"] == 1e-3


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 0.0), (0.0, 1e-2), (0.9, 4e-5)])
def test_rmsprop_tf_all_parameters_at_once_equal_one_at_a_time(momentum, weight_decay):
    """The foreach update is bit for bit the per-tensor formula (written out here), over several steps,
    with a parameter that has no gradient left untouched."""
    torch.manual_seed(0)
    params = [torch.randn(s, requires_grad=True) for s in ((3, 4), (7,), (2, 3, 5), (1,))]
    ref = [p.detach().clone() for p in params]
    sq = [torch.zeros_like(p) for p in ref]
    buf = [torch.zeros_like(p) for p in ref]
    opt = RMSpropTF(params, lr=0.05, alpha=0.9, eps=1e-3, momentum=momentum, weight_decay=weight_decay)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in ref]
        for i, (p, g) in enumerate(zip(params, grads)):
            p.grad = None if i == 3 else g.clone()
        opt.step()
        for i in range(3):
            g = grads[i].add(ref[i], alpha=weight_decay) if weight_decay else grads[i]
            sq[i].mul_(0.9).addcmul_(g, g, value=0.1)
            avg = sq[i].add(1e-3).sqrt_()
            if momentum:
                buf[i].mul_(momentum).addcdiv_(g, avg)
                ref[i].add_(buf[i], alpha=-0.05)
            else:
                ref[i].addcdiv_(g, avg, value=-0.05)
    for p, r in zip(params, ref):
        assert torch.equal(p.detach(), r)
    assert opt.state[params[0]]["step"] == 3 and params[3] not in opt.state
