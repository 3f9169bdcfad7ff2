"""The super network at exact parity with the authors' code (docs/authors-code.md §6, §9)."""
import json
import math

import pytest
import torch

from hrnas.errors import UserError
from hrnas.models import SearchingBlock, build_model, count_params, spec_of, validate_arch
from hrnas.models.searching_block import SEConfig
from hrnas.models.transformer import LightweightTransformer

# Params of the authors' supernets without their unused distillation BNs (issue #2 acceptance table).
SUPERNET_PARAMS = {"cityscapes": 10_110_235, "ade20k": 10_427_706, "coco": 10_110_053, "imagenet": 13_243_868}


@pytest.mark.parametrize("task", sorted(SUPERNET_PARAMS))
def test_supernet_params_match_authors(task):
    assert count_params(build_model(task)) == SUPERNET_PARAMS[task]


def test_block_counts():
    dense, cls = build_model("cityscapes"), build_model("imagenet")
    assert len(list(dense.searching_blocks())) == 61
    assert len(list(cls.searching_blocks())) == 67
    residual = [n for n, b in dense.searching_blocks() if b.residual]
    assert len(residual) == 44
    assert sum(n.startswith("fuse") for n, _ in dense.searching_blocks()) == 26
    # 44 residual blocks by width: 24×2, 18×11, 36×11, 72×11, 144×9 → ΣC = 2,730
    assert sum(b.inp for _, b in dense.searching_blocks() if b.residual) == 2730


def test_transformers_add_exact_params():
    base = count_params(build_model("cityscapes"))
    with_t = build_model("cityscapes", attention="transformer", placement="res")
    assert sum(b.transformer is not None for _, b in with_t.searching_blocks()) == 44
    assert count_params(with_t) - base == 2_731_604
    everywhere = build_model("cityscapes", attention="transformer", placement="res+down")
    assert sum(b.transformer is not None for _, b in everywhere.searching_blocks()) == 61


@pytest.mark.parametrize("proj,delta", [(2, 61_812), (4, 196_980), (8, 2_258_292), (16, 34_833_780)])
def test_projection_size_params(proj, delta):
    """Supplement Table 1 variants: n = 8 tokens in the 44 residual blocks."""
    base = SUPERNET_PARAMS["cityscapes"]
    assert count_params(build_model("cityscapes", attention="transformer", tokens=8, proj=proj)) - base == delta


@pytest.mark.parametrize("C", [18, 144])
def test_transformer_param_formula(C):
    # 12d² + (8+n)d + (2n+2)C + 4n (docs/authors-code.md §2.2)
    for n, s in [(64, 8), (8, 2), (8, 16)]:
        d = s * s
        t = LightweightTransformer(C, C, n, s)
        assert sum(p.numel() for p in t.parameters()) == 12 * d * d + (8 + n) * d + (2 * n + 2) * C + 4 * n


@pytest.mark.parametrize("task,size,out", [
    ("imagenet", (64, 64), (2, 1000)),
    ("cityscapes", (64, 128), (2, 19, 16, 32)),
    ("ade20k", (64, 64), (2, 150, 16, 16)),
    ("coco", (64, 48), (2, 17, 16, 12)),
    ("kitti", (64, 64), (2, 90, 16, 16)),
])
def test_output_shapes(task, size, out):
    model = build_model(task).eval()
    in_ch = 64 if task == "kitti" else 3
    with torch.no_grad():
        y = model(torch.randn(2, in_ch, *size))
    assert tuple(y.shape) == out
    assert torch.isfinite(y).all()


def test_odd_input_size_runs():
    model = build_model("cityscapes").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 70, 90)).shape == (1, 19, 18, 23)


@pytest.mark.parametrize("variant", [
    dict(attention="transformer", decoder=False),
    dict(attention="transformer", token_mode="spatial", tokens=8, proj=4),
    dict(attention="transformer", placement="res+down", tokens=8, proj=2),
    dict(se_ratio=0.25, se_on="output", se_placement="res"), dict(se_ratio=0.5, se_on="hidden"),
    dict(attention="nonlocal"), dict(act="swish"),
])
def test_ablation_variants_train_step(variant):
    model = build_model("cityscapes", expand_ratio=1, **variant)
    x = torch.randn(2, 3, 64, 64)
    y = model(x)
    y.mean().backward()
    assert y.shape == (2, 19, 16, 16)
    assert all(p.grad is not None for n, p in model.named_parameters() if "stem" in n)


def test_fused_paths_equal_per_path_sum():
    """One fused expand/projection = the authors' per-kernel paths summed (docs/authors-code.md §1.3)."""
    torch.manual_seed(0)
    block = SearchingBlock(8, 8, 1, [4, 6, 2]).eval()
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        e = torch.relu(block.expand_bn(block.expand(x)))
        total, start = 0, 0
        for h, dw, bn in zip(block.hidden, block.dw, block.dw_bn):
            path = torch.relu(bn(dw(e[:, start:start + h])))
            w = block.project.weight[:, start:start + h]
            total = total + torch.nn.functional.conv2d(path, w)
            start += h
        expected = x + block.project_bn(total)
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_block_with_all_paths_removed_is_its_shortcut():
    ident = SearchingBlock(8, 8, 1, [0, 0, 0])
    x = torch.randn(1, 8, 5, 5)
    assert torch.equal(ident(x), x)  # identity + a zero-initialised bias
    down = SearchingBlock(8, 16, 2, [0, 0, 0])
    assert down(x).shape == (1, 16, 3, 3)
    # grouped 1×1 conv (groups = gcd(8, 16) = 8) + 16 biases
    assert sum(p.numel() for p in down.parameters()) == 16 * 8 // 8 + 16


def test_arch_round_trip_and_searched_net():
    model = build_model("coco", attention="transformer", tokens=8, proj=4)
    spec = spec_of(model)
    assert json.loads(json.dumps(spec)) == spec
    spec["blocks"][0]["hidden"] = [5, 0, 3]
    spec["blocks"][1]["hidden"] = [0, 0, 0]
    spec["blocks"][1]["tokens"] = 0
    spec["blocks"][0]["tokens"] = 3
    searched = build_model(arch=spec)
    assert spec_of(searched) == {**spec, "blocks": [
        {**spec["blocks"][0], "kernels": [3, 7], "hidden": [5, 3]},
        {**spec["blocks"][1], "kernels": [], "hidden": []}] + spec["blocks"][2:]}
    again = build_model(arch=spec_of(searched))
    assert [tuple(p.shape) for p in again.parameters()] == [tuple(p.shape) for p in searched.parameters()]
    assert count_params(searched) < count_params(model)
    with torch.no_grad():
        assert searched.eval()(torch.randn(1, 3, 64, 48)).shape == (1, 17, 16, 12)


def test_arch_validation_names_the_problem(tmp_path):
    spec = spec_of(build_model("cityscapes"))
    with pytest.raises(UserError, match="architecture is for task 'cityscapes', not 'coco'"):
        validate_arch(spec, "coco")
    index = [b["name"] for b in spec["blocks"]].index("fuse1.0_0")
    bad = json.loads(json.dumps(spec))
    bad["blocks"][index]["kernels"] = [3, 9, 7]
    with pytest.raises(UserError, match="block 'fuse1.0_0': kernels"):
        validate_arch(bad, "cityscapes")
    bad = json.loads(json.dumps(spec))
    bad["blocks"][index]["oup"] = 20
    with pytest.raises(UserError, match="oup=20"):
        validate_arch(bad, None)
    bad = json.loads(json.dumps(spec))
    del bad["blocks"][5]
    with pytest.raises(UserError, match="missing"):
        validate_arch(bad, None)
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(UserError, match="broken.json: not valid JSON"):
        build_model("cityscapes", arch=path)
    # ADE20K's head is 180 wide: a Cityscapes arch cannot be relabelled as ADE20K
    bad = json.loads(json.dumps(spec))
    bad["task"] = "ade20k"
    bad["model"]["head_channels"] = 180
    with pytest.raises(UserError, match="head.transform': oup=90"):
        validate_arch(bad, "ade20k")


def test_keypoint_bn_settings_and_init():
    coco = build_model("coco")
    bn = coco.stem[0][1]
    assert (bn.momentum, bn.eps) == (0.1, 1e-5)
    conv_std = coco.head.transform.expand.weight.std().item()
    assert 0.0005 < conv_std < 0.002  # N(0, 0.001) heatmap init
    city = build_model("cityscapes")
    assert (city.stem[0][1].momentum, city.stem[0][1].eps) == (0.01, 1e-3)


def test_grad_checkpointing_gives_the_same_gradients_and_running_stats():
    """Recomputing the kernel paths in backward changes neither the gradients nor the BN statistics
    (which must be updated once, not again during the recomputation)."""
    import copy

    torch.manual_seed(0)
    ref = build_model("cityscapes", expand_ratio=1, tokens=4, proj=4).double().train()
    ck = copy.deepcopy(ref)
    ck.set_grad_checkpointing(True)
    assert all(b.grad_checkpointing for _, b in ck.searching_blocks())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    for net in (ref, ck):
        net(x).square().mean().backward()
    for (name, a), b in zip(ref.named_parameters(), ck.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-9, atol=1e-12), name
    for (name, a), b in zip(ref.named_buffers(), ck.buffers()):
        assert torch.equal(a, b), name  # running_mean/var and num_batches_tracked: one update
    _, block = next(ck.searching_blocks())
    assert int(block.dw_bn[0].num_batches_tracked) == 1


# ---- HR-NAS†‡: SE on the hidden features (the authors' fused block), activation, initialisation -------------

def test_fused_se_block_params_match_a_hand_count():
    """SE 0.5 on the concatenated hidden features: reduce Σh → round(0.5·inp) and expand back, with biases."""
    inp, oup, hidden = 18, 36, [31, 29, 30]
    plain = SearchingBlock(inp, oup, 2, hidden)
    fused = SearchingBlock(inp, oup, 2, hidden, se=SEConfig(ratio=0.5, on="hidden"))
    total, r = sum(hidden), round(inp * 0.5)
    # plain: expand conv + BN, depthwise convs + BNs, projection + BN, grouped 1×1 shortcut (gcd 18)
    hand = inp * total + 2 * total + sum(k * k * h + 2 * h for k, h in zip((3, 5, 7), hidden)) \
        + total * oup + 2 * oup + inp * oup // 18
    assert count_params(plain) == hand == 7_802
    assert count_params(fused) - count_params(plain) == (total * r + r) + (r * total + total) == 1_719
    assert tuple(fused.se.reduce.weight.shape) == (r, total, 1, 1)
    output = SearchingBlock(inp, oup, 2, hidden, se=SEConfig(ratio=0.25, on="output"))
    assert count_params(output) - count_params(plain) == (oup * 4 + 4) + (4 * oup + oup)  # round(18/4) = 4


def test_hidden_se_gates_the_concatenated_paths_before_the_projection():
    torch.manual_seed(0)
    block = SearchingBlock(8, 8, 1, [4, 6, 2], act="swish", se=SEConfig(ratio=0.5, on="hidden")).eval()
    x = torch.randn(2, 8, 9, 9)
    silu = torch.nn.functional.silu
    with torch.no_grad():
        e = silu(block.expand_bn(block.expand(x)))
        cat = torch.cat([silu(bn(dw(p))) for p, dw, bn in zip(e.split(block.hidden, 1), block.dw, block.dw_bn)], 1)
        se = block.se
        gate = torch.sigmoid(se.expand(silu(se.reduce(cat.mean((2, 3), keepdim=True)))))
        expected = x + block.project_bn(torch.nn.functional.conv2d(cat * gate, block.project.weight))
        assert torch.allclose(block(x), expected, atol=1e-5)
    assert isinstance(se.act, torch.nn.SiLU)  # the gate uses the block's activation, as the authors'


def test_se_options_and_placement():
    fused = build_model("imagenet", expand_ratio=1, se_ratio=0.5, se_on="hidden", se_placement="res+down")
    assert all(b.se is not None and b.se_on == "hidden" for _, b in fused.searching_blocks())
    res = build_model("cityscapes", expand_ratio=1, se_ratio=0.25, se_on="output", se_placement="res")
    assert sum(b.se is not None for _, b in res.searching_blocks()) == 44
    assert all(b.se.expand.out_channels == b.oup for _, b in res.searching_blocks() if b.se is not None)
    with_t = build_model("cityscapes", expand_ratio=1, attention="transformer", tokens=4, proj=2, se_ratio=0.5)
    both = [b for _, b in with_t.searching_blocks() if b.se is not None and b.transformer is not None]
    assert len(both) == 44  # SE and the transformer combine
    for bad, match in [(dict(se_ratio=0.0), "se_ratio"), (dict(se_on="input"), "se_on"),
                       (dict(se_placement="all"), "se_placement"), (dict(attention="se"), "attention")]:
        with pytest.raises(UserError, match=match):
            build_model("cityscapes", **bad)


@pytest.mark.parametrize("act,cls", [("relu", torch.nn.ReLU), ("swish", torch.nn.SiLU)])
def test_fusion_activation_follows_model_act(act, cls):
    model = build_model("cityscapes", expand_ratio=1, act=act)
    assert all(isinstance(f.act, cls) for f in model.fuse)
    assert isinstance(model.stem[0][2], cls) and isinstance(next(model.searching_blocks())[1].act, cls)


def test_transformer_init_as_the_authors():
    from hrnas.models.transformer import coordinate_channels

    n, s, C = 64, 8, 18
    d = s * s
    torch.manual_seed(0)
    cls = build_model("imagenet", expand_ratio=1, attention="transformer", tokens=n, proj=s)
    coco = build_model("coco", expand_ratio=1, attention="transformer", tokens=n, proj=s)
    for model in (cls, coco):
        t = next(b.transformer for _, b in model.searching_blocks() if b.transformer is not None)
        q = t.query_embed.detach()
        bound = math.sqrt(6 / (n + d))  # Xavier-uniform over the (n, d) queries: ±0.2165
        assert q.abs().max() <= bound and q.abs().max() > 0.95 * bound
        assert q.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
        in_proj = torch.cat([t.encoder.attn.q.weight, t.encoder.attn.kv.weight]).detach()
        joint = math.sqrt(6 / (d + 3 * d))  # one (3d × d) Xavier matrix, as MultiheadAttention: ±0.153
        assert in_proj.abs().max() <= joint and in_proj.abs().max() > 0.95 * joint
    ffn = lambda model: next(b.transformer for _, b in model.searching_blocks()  # noqa: E731
                             if b.transformer is not None).encoder.ffn[0].weight.detach()
    # mnas re-initialises the FFN linears U(±1/√d) = ±0.125; the heatmap init leaves their Xavier ±√(3/d) = ±0.2165
    assert ffn(cls).abs().max() <= 1 / math.sqrt(d) and ffn(cls).abs().max() > 0.95 / math.sqrt(d)
    assert ffn(coco).abs().max() <= math.sqrt(3 / d) and ffn(coco).abs().max() > 0.95 * math.sqrt(3 / d)
    grid = coordinate_channels(s, torch.zeros(1))
    assert torch.allclose(grid.std(dim=(2, 3), correction=0), torch.ones(1, 2))  # population std
    assert grid[0, 0, 0, -1].item() == pytest.approx(3.5 / math.sqrt((s * s - 1) / 12))  # x of the last column


def test_odd_size_dense_network_with_downsampling_transformers():
    model = build_model("ade20k", expand_ratio=1, attention="transformer", placement="res+down", tokens=4, proj=2,
                        se_ratio=0.25, se_on="output").eval()
    with torch.no_grad():  # 37×53: the 1/4 ... 1/32 branches are 10×14, 5×7, 3×4, 2×2
        assert model(torch.randn(1, 3, 37, 53)).shape == (1, 150, 10, 14)


def test_shipped_architecture_by_name():
    from hrnas.models import load_arch

    spec = load_arch("hrnas-a-imagenet")
    assert spec["task"] == "imagenet" and len(spec["blocks"]) == 67
    assert sum(not b["hidden"] for b in spec["blocks"]) == 9
    assert spec["blocks"][0] == {"name": "fuse0.0_0", "inp": 24, "oup": 24, "stride": 1, "kernels": [3, 5, 7],
                                 "hidden": [32, 12, 1], "tokens": 0}
    validate_arch(spec, "imagenet")
    with pytest.raises(UserError, match="no such architecture file, nor a shipped architecture "
                                        r"\(shipped: hrnas-a-imagenet"):
        load_arch("hrnas-b-imagenet")


@pytest.mark.parametrize("task", ["imagenet", "cityscapes"])
def test_feature_info_records_where_each_block_computes(task):
    """Every searching block's recorded branches are the resolutions it really reads and writes (an up-path
    of a fusion computes at the low resolution: its output is upsampled after the block)."""
    from hrnas.search.costs import branch_sizes

    net = build_model(task).eval()
    size = (64, 96)
    seen = {}
    hooks = [block.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, (i[0].shape[-2:], o.shape[-2:])))
             for name, block in net.searching_blocks()]
    with torch.no_grad():
        net(torch.randn(1, 3, *size))
    for h in hooks:
        h.remove()
    sizes = branch_sizes(size)
    assert [info.name for info in net.feature_info] == list(net.block_order) and len(seen) == len(net.feature_info)
    for info in net.feature_info:
        got_in, got_out = seen[info.name]
        assert tuple(got_in) == sizes[info.in_branch] and tuple(got_out) == sizes[info.out_branch], info
        assert info.module == info.name.split(".")[0] if info.module != "head" else info.name.startswith("head.")
    ups = [info for info in net.feature_info if info.to_branch == info.in_branch - 1]
    assert len(ups) == 1 + 2 + 3 and all(info.role == "fuse" and info.out_branch == info.in_branch for info in ups)
    assert all(info.to_branch == info.out_branch for info in net.feature_info if info not in ups)
    roles = [info.role for info in net.feature_info]
    # fusions 1→1, 1→2, 2→3, 3→4, 4→4: 1 + 1 + 4 + 7 + 10 paths and 3 new branches (docs/authors-code.md §1.2)
    assert (roles.count("fuse"), roles.count("new"), roles.count("chain")) == (23, 3, 1 + 4 + 7 + 11 + 11)
    head = {"imagenet": ["incre"] * 4 + ["down"] * 3, "cityscapes": ["transform"]}[task]
    assert roles[-len(head):] == head and len(roles) == 26 + 34 + len(head)
