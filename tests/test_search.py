"""Progressive shrinking is exact for channels, accounts MACs exactly and keeps training going (issue #4;
the EMA's part, tokens, SE and the authors' bookkeeping: tests/test_shrink_fidelity.py)."""
import pytest
import torch

from hrnas.engine.ema import ModelEMA
from hrnas.engine.optim import RMSpropTF
from hrnas.errors import UserError
from hrnas.models import build_model, count_params, spec_of
from hrnas.profile import profile
from hrnas.search import SearchController

from helpers import randomise_bn

SIZE = (64, 64)


@pytest.fixture(scope="module")
def trained_like():
    """A small supernet with non-trivial BN statistics whose outputs stay O(1)."""
    torch.manual_seed(0)
    model = build_model("cityscapes", expand_ratio=1, attention="transformer", tokens=6, proj=2)
    return randomise_bn(model, seed=1, layer_norm=False)


def kill(model, seed=2, tokens=False, ema=None):
    """Zero the γ of ~half the channels, of whole blocks, and (``tokens``) of 2 tokens per transformer;
    the same in the EMA's shadow when given (the EMA decides too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i, (_, block) in enumerate(model.searching_blocks()):
            for bn in block.dw_bn or []:
                bn.weight[torch.rand(bn.weight.shape, generator=g) < 0.5] = 0
                if i % 6 == 0:
                    bn.weight.zero_()
            if tokens and block.transformer is not None:
                block.transformer.input_norm.weight[:2] = 0
        if ema is not None:
            for name, p in model.named_parameters():
                if name.endswith("weight") and ("dw_bn" in name or "input_norm" in name):
                    ema.shadow[name][p == 0] = 0


def controller(model, **cfg):
    base = {"rho": 1e-3, "threshold": 1e-3, "shrink_every": 1, "min_removable_macs": 0}
    return SearchController(model, {**base, **cfg}, SIZE, steps_per_epoch=1, total_steps=10)


def test_shrink_is_exact_and_accounts_macs(trained_like):
    import copy
    model = copy.deepcopy(trained_like)
    ctrl = controller(model)
    supernet_macs, supernet_params = ctrl.macs(), count_params(model)
    assert supernet_macs == profile(model, SIZE).macs
    kill(model)
    # float64 so that the comparison measures the algebra, not float32 summation-order noise
    model.double().eval()
    x = torch.randn(2, 3, *SIZE, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
    report = ctrl.maybe_shrink(model, step=1)
    with torch.no_grad():
        after = model(x)
    assert report["removed_channels"] > 1000 and report["removed_tokens"] == 0
    assert (before - after).abs().max().item() <= 1e-5
    assert before.abs().max().item() > 0.1  # the comparison is not trivially between zeros
    # MACs/params drop by exactly the removed amount: the controller's account equals the profiler's
    prof = profile(model, SIZE)
    assert report["macs"] == prof.macs == ctrl.macs() < supernet_macs
    assert report["params"] == count_params(model) < supernet_params
    removed = [b for _, b in model.searching_blocks() if b.expand is None]
    assert len(removed) >= 10  # blocks shrunk to their shortcut still run (forward above)
    # the shrunk network is described exactly by its architecture spec
    rebuilt = build_model(arch=spec_of(model)).double()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), after)


def test_optimizer_and_ema_follow_the_shrink(trained_like):
    import copy
    model = copy.deepcopy(trained_like).train()
    optim = RMSpropTF(model.parameters(), lr=1e-3)
    ema = ModelEMA(model, 0.9)
    x = torch.randn(2, 3, *SIZE)
    model(x).mean().backward()
    optim.step()
    ema.update(model)
    ctrl = controller(model)
    kill(model, seed=3, tokens=True, ema=ema)
    report = ctrl.maybe_shrink(model, step=1, optimizer=optim, ema=ema)
    assert report["removed_channels"] > 1000 and report["removed_tokens"] == 2 * 44
    params = dict(model.named_parameters())
    for name, p in params.items():
        state = optim.state.get(p)
        if state:
            assert state["square_avg"].shape == p.shape, name
        assert ema.shadow[name].shape == p.shape, name
    assert set(ema.shadow) == set(model.state_dict())
    assert {id(p) for g in optim.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    optim.zero_grad()
    (model(x).mean() + ctrl.penalty(model, 5)).backward()
    optim.step()
    ema.update(model)


def test_penalty_weights_and_schedule(trained_like):
    ctrl = SearchController(trained_like, {"rho": 2e-3, "rho_free_epochs": 1, "rho_warmup_epochs": 2,
                                           "threshold": 1e-3}, SIZE, steps_per_epoch=10, total_steps=100)
    assert ctrl.rho_at(5) == 0.0 and ctrl.rho_at(20) == pytest.approx(1e-3) and ctrl.rho_at(50) == 2e-3
    pen = ctrl.penalty(trained_like, 50)
    # by hand: Σ_units w·Σ|γ| with w = cost / mean cost; a token (the authors' formula, n tokens alive, d = s²):
    # (F − 2n²d)/n + 2·(n² − (n−1)²)·d = s²·(C_in + 2 + C_out) + 4d² + 4 + 2·(2n − 1)·d
    expected = 0.0
    for name, kind, k, n, cost in ctrl._units(ctrl._geo_cost):
        block = ctrl._blocks[name]
        if kind == "path":
            expected += block.dw_bn[k].weight.abs().sum().item() * cost / ctrl._normaliser
        else:
            t = block.transformer
            d = t.proj_size ** 2
            cost = d * (t.in_channels + 2 + t.out_channels) + 4 * d * d + 4 + 2 * (2 * n - 1) * d
            expected += t.input_norm.weight.abs().sum().item() * cost / ctrl._normaliser
    assert pen.item() == pytest.approx(2e-3 * expected, rel=1e-5)
    # the high-resolution head costs more per channel than a 1/32 block
    costs = {(n, k): c for n, kind, k, _, c in ctrl._units(ctrl._geo_cost) if kind == "path"}
    assert costs[("head.transform", 2)] > costs[("parallel4.3_3", 0)]


def test_min_removable_macs_defers_shrinking(trained_like):
    import copy
    model = copy.deepcopy(trained_like)
    ctrl = controller(model, min_removable_macs=1e12)
    kill(model)
    assert ctrl.maybe_shrink(model, step=1) is None
    assert ctrl.maybe_shrink(model, step=2, final=True) is not None  # always at the end


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.4])
def test_budget_mode_lands_within_5_percent(trained_like, fraction):
    import copy
    model = copy.deepcopy(trained_like)
    ctrl = controller(model, rho=0.0)
    target = fraction * ctrl.macs()
    ctrl = controller(model, rho=0.0, budget_macs=target)
    ctrl.maybe_shrink(model, step=1, final=True)
    assert abs(ctrl.macs() - target) <= 0.05 * target
    assert profile(model, SIZE).macs == ctrl.macs()


def test_bad_search_settings():
    model = build_model("coco", expand_ratio=1)
    with pytest.raises(UserError, match="search.rho"):
        SearchController(model, {"rho": -1.0}, (64, 48), 1, 1)
    with pytest.raises(UserError, match="search.threshold"):
        SearchController(model, {"rho": 1e-4, "threshold": -1e-3}, (64, 48), 1, 1)


def test_budget_ratio_shrinks_progressively_to_the_budget(trained_like):
    """budget_ratio: each shrink cuts down to a target falling linearly from the supernet to the budget."""
    import copy
    model = copy.deepcopy(trained_like)
    ctrl = controller(model, rho=0.0, budget_ratio=0.3, min_removable_macs=0.0)
    supernet = ctrl.macs()
    assert ctrl.budget == pytest.approx(0.3 * supernet)
    # 10 steps, a shrink every step: the target falls from the supernet (step 0) to the budget (step 9)
    half = 4
    ctrl.maybe_shrink(model, step=half)
    target = ctrl.budget_target(half)
    assert target == pytest.approx(supernet * (1 - 0.7 * 4 / 9))
    assert ctrl.budget_target(9) == ctrl.budget_target(10) == ctrl.budget
    assert abs(ctrl.macs() - target) <= 0.05 * target and ctrl.macs() < supernet
    ctrl.maybe_shrink(model, step=ctrl.total_steps, final=True)
    assert abs(ctrl.macs() - ctrl.budget) <= 0.05 * ctrl.budget
    assert profile(model, SIZE).macs == ctrl.macs()
    with pytest.raises(UserError, match=r"search.budget_ratio must be in \(0, 1\], got 1.5"):
        controller(model, budget_ratio=1.5)
    with pytest.raises(UserError, match="give one of them"):
        controller(model, budget_ratio=0.5, budget_macs=1e6)
