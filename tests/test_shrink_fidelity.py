"""The search's shrinking as the authors' code does it (issue #13, items 1-5): the EMA decides, the EMA is
folded with its own tensors, token removal is measured, SE of an emptied block is folded, the authors'
token penalty and removable-MACs size, and budgets measured at another input size."""
import copy

import pytest
import torch

from hrnas.engine.config import load_config
from hrnas.engine.ema import ModelEMA
from hrnas.errors import UserError
from hrnas.models import build_model, spec_of
from hrnas.profile import profile
from hrnas.search import SearchController, transformer_hrnas_macs, transformer_true_macs
from hrnas.search.costs import block_geometry
from hrnas.search.shrink import ShrinkLog, shrink_tokens

from helpers import randomise_bn

SIZE = (32, 32)
BLOCK = "parallel1.0_0"  # branch 0, 18 -> 18 channels, kernels 3/5/7


def net(attention="transformer", **kw):
    torch.manual_seed(0)
    return randomise_bn(build_model("cityscapes", expand_ratio=1, attention=attention, tokens=6, proj=2, **kw)).double()


def controller(model, size=SIZE, **cfg):
    base = {"rho": 1e-3, "threshold": 1e-3, "shrink_every": 1, "min_removable_macs": 0}
    return SearchController(model, {**base, **cfg}, size, steps_per_epoch=1, total_steps=10)


def perturbed_ema(model, seed=5):
    """An EMA whose every float tensor differs from the live one (BN variances stay positive)."""
    ema = ModelEMA(model, 0.9)
    g = torch.Generator().manual_seed(seed)
    for name, t in ema.shadow.items():
        if t.is_floating_point():
            factor = torch.empty(t.shape, dtype=t.dtype).uniform_(0.8, 1.2, generator=g)
            ema.shadow[name] = t * factor if name.endswith("running_var") else \
                t + 0.1 * t.abs().mean() * torch.randn(t.shape, generator=g, dtype=t.dtype)
    return ema


def ema_output(model, ema, x):
    with torch.no_grad():
        clone = copy.deepcopy(model)
        ema.copy_to(clone)
        return clone.eval()(x)


def gammas(block, k):
    return block.dw_bn[k].weight


# ---- item 1: the EMA decides -------------------------------------------------------------------
def test_the_ema_decides_which_channels_go():
    model = net()
    block = dict(model.searching_blocks())[BLOCK]
    ema = ModelEMA(model, 0.9)
    prefix = next(q for q, m in model.named_modules() if getattr(m, "block_name", None) == BLOCK)
    name = f"{prefix}.dw_bn.0.weight"
    with torch.no_grad():
        gammas(block, 0).copy_(torch.arange(1, 19, dtype=torch.float64) / 10)  # 0.1 .. 1.8: every one alive
        ema.shadow[name] = gammas(block, 0).detach().clone()
        gammas(block, 0)[0] = 0.0            # dead in the live model, alive in the EMA
        ema.shadow[name][1] = 0.0            # alive in the live model, dead in the EMA
        gammas(block, 0)[2] = 0.0            # dead in both
        ema.shadow[name][2] = 0.0
    ctrl = controller(model)
    report = ctrl.maybe_shrink(model, step=1, ema=ema)
    assert report is not None and report["removed_channels"] == 1 and block.hidden[0] == 17
    kept_ema = ema.shadow[name]
    assert kept_ema[0].item() == pytest.approx(0.1) and kept_ema[1].item() == 0.0  # channels 0 and 1 survive
    assert gammas(block, 0)[0].item() == 0.0 and gammas(block, 0)[1].item() == pytest.approx(0.2)
    # only live-dead channels left: the EMA says they are alive, nothing is removed
    assert ctrl.maybe_shrink(model, step=2, ema=ema) is None
    # the last shrink: the EMA alone decides; channel 0 is dead in the EMA now, channel 1 already was
    ema.shadow[name][0] = 0.0
    report = ctrl.maybe_shrink(model, step=3, ema=ema, final=True)
    assert report["final"] and report["removed_channels"] == 2 and block.hidden[0] == 15
    assert gammas(block, 0)[0].item() == pytest.approx(0.4)  # 0.1, 0.2 (live 0.2 > threshold), 0.3 gone
    # without an EMA the live weights decide
    model2 = net()
    block2 = dict(model2.searching_blocks())[BLOCK]
    with torch.no_grad():
        gammas(block2, 0)[:3] = 0.0
    assert controller(model2).maybe_shrink(model2, step=1)["removed_channels"] == 3


def test_whether_to_shrink_is_decided_on_the_ema_units():
    """min_removable_macs is compared with the MACs of the EMA's dead units (the authors' flops_pruned)."""
    model = net()
    ema = ModelEMA(model, 0.9)
    block = dict(model.searching_blocks())[BLOCK]
    with torch.no_grad():
        gammas(block, 0)[:5] = 0.0  # the live model would remove 5 channels...
    prefix = next(q for q, m in model.named_modules() if getattr(m, "block_name", None) == BLOCK)
    ema.shadow[f"{prefix}.dw_bn.0.weight"][:1] = 0.0  # ...the EMA agrees on one
    ctrl = controller(model, min_removable_macs=2 * block_geometry(model, SIZE)[BLOCK].channel_cost(3) - 1)
    assert ctrl.maybe_shrink(model, step=1, ema=ema) is None  # one channel's MACs < the minimum
    ema.shadow[f"{prefix}.dw_bn.0.weight"][:2] = 0.0
    assert ctrl.maybe_shrink(model, step=2, ema=ema)["removed_channels"] == 2


# ---- item 2: the EMA's own fold ----------------------------------------------------------------
def kill_both(model, ema, seed=2):
    """γ = 0 in the live model and in the EMA for ~half the channels and every path of some blocks."""
    g = torch.Generator().manual_seed(seed)
    prefixes = {getattr(m, "block_name"): q for q, m in model.named_modules() if getattr(m, "block_name", None)}
    with torch.no_grad():
        for i, (name, block) in enumerate(model.searching_blocks()):
            for k, bn in enumerate(block.dw_bn or []):
                dead = torch.rand(bn.weight.shape, generator=g) < 0.5
                if i % 6 == 0:
                    dead[:] = True
                bn.weight[dead] = 0
                ema.shadow[f"{prefixes[name]}.dw_bn.{k}.weight"][dead] = 0


def test_the_ema_network_is_unchanged_by_a_shrink():
    model = net()
    ema = perturbed_ema(model)
    kill_both(model, ema)
    prefix = next(q for q, m in model.named_modules() if getattr(m, "block_name", None) == BLOCK)
    # the test means something: the EMA's β and projection differ from the live ones
    assert not torch.allclose(ema.shadow[f"{prefix}.dw_bn.0.bias"], dict(model.searching_blocks())[BLOCK].dw_bn[0].bias)
    x = torch.randn(2, 3, *SIZE, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        live_before = model(x)
    ema_before = ema_output(model, ema, x)
    report = controller(model).maybe_shrink(model, step=1, ema=ema)
    assert report["removed_channels"] > 500 and sum(b.expand is None for _, b in model.searching_blocks()) >= 10
    with torch.no_grad():
        assert (model(x) - live_before).abs().max().item() <= 1e-5
    assert (ema_output(model, ema, x) - ema_before).abs().max().item() <= 1e-5
    assert ema_before.abs().max().item() > 0.1 and (ema_before - live_before).abs().max().item() > 0.1
    assert "output_change" not in report  # no probe batch: the model never ran a training step here


def test_the_last_shrink_keeps_the_ema_network_and_cuts_live_channels():
    """At the last shrink, channels whose EMA γ is 0 go even where the live γ is large: the EMA network
    (the one evaluated and exported) is unchanged, emptied blocks included."""
    model = net()
    ema = perturbed_ema(model)
    prefixes = {getattr(m, "block_name"): q for q, m in model.named_modules() if getattr(m, "block_name", None)}
    with torch.no_grad():
        for i, (name, block) in enumerate(model.searching_blocks()):
            for k, bn in enumerate(block.dw_bn or []):
                shadow = ema.shadow[f"{prefixes[name]}.dw_bn.{k}.weight"]
                shadow[: (len(shadow) if i % 5 == 0 else 4)] = 0  # live γ untouched (0.2 .. 0.5)
    x = torch.randn(2, 3, *SIZE, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        live_before = model(x)
    ema_before = ema_output(model, ema, x)
    report = controller(model).maybe_shrink(model, step=9, ema=ema, final=True)
    assert report["removed_channels"] > 500
    assert (ema_output(model, ema, x) - ema_before).abs().max().item() <= 1e-5
    with torch.no_grad():
        assert (model(x) - live_before).abs().max().item() > 1e-2  # the live network did lose live channels


# ---- item 3: token removal is measured -----------------------------------------------------------
def test_token_removal_is_measured_exactly_on_the_probe_batch():
    """A token with γ = 1e-4 (below the threshold) is removed; the report's change is the exact change of
    each transformer's output on its pre-shrink input and of the whole network on the probe batch."""
    model = net()
    with torch.no_grad():
        for _, block in model.searching_blocks():
            if block.transformer is not None:
                block.transformer.input_norm.weight[0] = 1e-4
    x = torch.randn(2, 3, *SIZE, dtype=torch.float64)
    ref = copy.deepcopy(model).eval()
    inputs, outputs = {}, {}
    for name, block in ref.searching_blocks():
        if block.transformer is not None:
            def keep(m, args, out, name=name):
                inputs[name], outputs[name] = args[0], out
            block.transformer.register_forward_hook(keep)
    with torch.no_grad():
        y_before = ref(x)
    ctrl = controller(model)
    supernet_params = sum(p.numel() for p in model.parameters())
    report = ctrl.maybe_shrink(model, step=1, probe=x)
    assert report["removed_tokens"] == 44 and report["removed_channels"] == 0
    change = report["output_change"]
    assert change["samples"] == 2 and set(change["tokens"]) == set(outputs) and change["seconds"] > 0
    model.eval()
    blocks = dict(model.searching_blocks())
    with torch.no_grad():
        for name, c in change["tokens"].items():
            delta = blocks[name].transformer(inputs[name]) - outputs[name]
            assert c["max_abs"] == pytest.approx(delta.abs().max().item(), rel=1e-9, abs=1e-12)
            assert c["rel"] == pytest.approx((delta.norm() / outputs[name].norm()).item(), rel=1e-9)
            assert c["max_abs"] > 1e-4  # removing a below-threshold token is not exact
        delta = model(x) - y_before
    assert change["network"]["max_abs"] == pytest.approx(delta.abs().max().item(), rel=1e-9)
    assert change["network"]["max_abs"] > 1e-4 and "ema_network" not in change
    # the MACs account follows the removed tokens exactly
    assert report["macs"] == profile(model, SIZE).macs == ctrl.macs()
    assert report["params"] == sum(p.numel() for p in model.parameters()) < supernet_params


def test_a_zero_gamma_token_is_not_masked_in_eval():
    """Train and eval compute the same function: a γ = 0 token still takes part in the attention, so its
    removal changes the eval output too (the shrink reports it)."""
    block = copy.deepcopy(dict(net().searching_blocks())[BLOCK]).eval()
    t = block.transformer
    x = torch.randn(2, t.in_channels, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        t.input_norm.weight[0] = 0.0
        y = t(x)
        shrink_tokens(block, torch.tensor([False] + [True] * 5), "", ShrinkLog())
        assert t.num_tokens == 5
        assert (t(x) - y).abs().max().item() > 1e-3


def test_the_probe_is_the_last_training_batch():
    model = net()
    ctrl = controller(model)
    x1, x2 = (torch.randn(6, 3, *SIZE, dtype=torch.float64) for _ in range(2))
    model.train()
    model(x1)
    assert torch.equal(ctrl._probe.x, x1[:4])
    model.eval()
    with torch.no_grad():
        model(x2)                              # evaluation passes do not replace it
        copy.deepcopy(model).train()(x2)       # nor forwards of copies (the trainer's eval copy)
    assert torch.equal(ctrl._probe.x, x1[:4])
    with torch.no_grad():
        dict(model.searching_blocks())[BLOCK].dw_bn[0].weight[:4] = 0
    report = ctrl.maybe_shrink(model, step=1, ema=ModelEMA(model, 0.9))
    assert report["output_change"]["samples"] == 4
    assert report["output_change"]["network"]["max_abs"] <= 1e-9  # dead channels only: exact
    assert report["output_change"]["ema_network"]["max_abs"] <= 1e-9


# ---- item 4: SE of an emptied block ---------------------------------------------------------------
def test_emptied_se_block_stays_exact_live_and_ema():
    model = net(attention="none", se_ratio=0.25, se_on="output", se_placement="res")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():  # a gate far from 0.5 so that a dropped SE would show
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-1, 1, generator=g)
    ema = perturbed_ema(model)
    se_blocks = [name for name, b in model.searching_blocks() if b.se is not None]
    assert len(se_blocks) == 44
    prefixes = {getattr(m, "block_name"): q for q, m in model.named_modules() if getattr(m, "block_name", None)}
    emptied = se_blocks[::3]
    with torch.no_grad():
        for name, block in model.searching_blocks():
            for k, bn in enumerate(block.dw_bn):
                dead = slice(None) if name in emptied else slice(0, 3)
                bn.weight[dead] = 0
                ema.shadow[f"{prefixes[name]}.dw_bn.{k}.weight"][dead] = 0
    x = torch.randn(2, 3, *SIZE, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        before = model(x)
    ema_before = ema_output(model, ema, x)
    controller(model).maybe_shrink(model, step=1, ema=ema)
    blocks = dict(model.searching_blocks())
    assert all(blocks[n].expand is None and blocks[n].se is None for n in emptied)
    with torch.no_grad():
        after = model(x)
    assert (after - before).abs().max().item() <= 1e-5 and before.abs().max().item() > 0.1
    assert (ema_output(model, ema, x) - ema_before).abs().max().item() <= 1e-5
    assert set(ema.shadow) == set(model.state_dict())
    rebuilt = build_model(arch=spec_of(model)).double().eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), after)


# ---- item 5: the authors' bookkeeping -----------------------------------------------------------
def test_authors_token_penalty_against_hand_computed_numbers():
    torch.manual_seed(0)
    model = build_model("cityscapes", expand_ratio=1, attention="transformer", tokens=64, proj=8)
    t = dict(model.searching_blocks())[BLOCK].transformer
    assert (t.in_channels, t.out_channels, t.num_tokens, t.proj_size) == (18, 18, 64, 8)
    # the authors' profiler: n·d·(2C+2) + 4·n·d² + 2·n²·d + 4n = 155 648 + 1 048 576 + 524 288 + 256
    assert transformer_hrnas_macs(t, 64) == 1_728_768
    ctrl = SearchController(model, {"rho": 1e-3}, (64, 64), 1, 10)  # token_cost: hrnas (default)
    true_cost = transformer_true_macs(t, 64) - transformer_true_macs(t, 63)
    assert true_cost == 84_096
    gamma = t.input_norm.weight
    # (F − 2·n0²·d)/n0 = (1 728 768 − 524 288)/64 = 18 820; + 2·(n² − (n−1)²)·d
    w = lambda: float(ctrl._token_weight(BLOCK, gamma, true_cost)) * ctrl._normaliser
    assert w() == pytest.approx(18_820 + 2 * 127 * 64)   # n = 64: 35 076
    with torch.no_grad():
        gamma[10:] = 0
    assert w() == pytest.approx(18_820 + 2 * 19 * 64)    # n = 10: 21 252
    with torch.no_grad():
        gamma[:10] = -0.5                                 # |γ| counts (the authors counted signed γ)
    assert w() == pytest.approx(21_252)
    with torch.no_grad():
        gamma.zero_()
    assert w() == pytest.approx(18_820)                  # n = 0
    # the normaliser counts a transformer as its profiler MACs F (n0 tokens of F/n0 each)
    geo = block_geometry(model, (64, 64))
    total = count = 0
    for name, b in model.searching_blocks():
        total += sum(h * geo[name].channel_cost(k) for k, h in zip(b.kernels, b.hidden))
        count += sum(b.hidden)
        if b.transformer is not None:
            total += transformer_hrnas_macs(b.transformer, 64)
            count += 64
    assert ctrl._normaliser == pytest.approx(total / count)
    ours = SearchController(model, {"rho": 1e-3, "token_cost": "true"}, (64, 64), 1, 10)
    assert float(ours._token_weight(BLOCK, gamma, true_cost)) * ours._normaliser == pytest.approx(84_096)
    with pytest.raises(UserError, match="search.token_cost='exact' is not one of hrnas, true"):
        SearchController(model, {"rho": 1e-3, "token_cost": "exact"}, (64, 64), 1, 10)


def test_removable_macs_are_counted_at_the_cost_size():
    """3 dead channels of the k = 3 path of a branch-0 block (18 -> 18): (18 + 9 + 18) MACs per output pixel
    each, at 224×224 (56×56 at 1/4: 141 120 per channel) or at the task's 64×64 (16×16: 11 520)."""
    def shrunk(removable_size):
        model = net()
        with torch.no_grad():
            dict(model.searching_blocks())[BLOCK].dw_bn[0].weight[:3] = 0
        ctrl = controller(model, size=(64, 64), cost_size=224, min_removable_macs=1e5,
                          removable_size=removable_size)
        ctrl._prefix = {b: f"{q}." for q, m in model.named_modules() for b in [getattr(m, "block_name", None)] if b}
        removable = ctrl._removable_macs(ctrl._alive(ctrl._scores(None, "live")), ctrl._geo_removable)
        return removable, ctrl.maybe_shrink(model, step=1)

    removable, report = shrunk("cost")
    assert removable == 3 * 141_120 and report["removed_channels"] == 3
    removable, report = shrunk("task")
    assert removable == 3 * 11_520 and report is None  # below min_removable_macs = 1e5
    c = load_config("cityscapes", "paper")["search"]
    assert (c["removable_size"], c["token_cost"], c["cost_size"], c["budget_size"]) == ("cost", "hrnas", 224, None)


# ---- search.budget_size ---------------------------------------------------------------------------
def test_budget_given_at_another_input_size():
    """A budget in MACs at 512×1024 while the search runs at 32×32 lands within the tolerance when the
    network is profiled at 512×1024 (conv MACs scale with the area, the transformers' do not)."""
    model = net().float()
    big = (512, 1024)
    ctrl = controller(model, rho=0.0, budget_ratio=0.3, budget_size=list(big))
    target = ctrl.budget
    assert target == pytest.approx(0.3 * ctrl.supernet_macs) and ctrl.supernet_macs == ctrl.macs_at_budget_size()
    assert target > ctrl.macs() == profile(model, SIZE).macs  # taken at the task's size it would remove nothing
    report = ctrl.maybe_shrink(model, step=9, final=True)
    at_big = profile(model, big, on_meta=False).macs
    assert abs(at_big - target) <= 0.05 * target
    assert report["macs_at_budget_size"] == at_big == ctrl.macs_at_budget_size()
    assert report["macs"] == profile(model, SIZE).macs
    with pytest.raises(UserError, match=r"search.budget_size must be null .* got \[512\]"):
        controller(model, budget_size=[512])
    assert load_config("cityscapes", "tiny", ["search.budget_size=[512, 1024]"])["search"]["budget_size"] == [512, 1024]
