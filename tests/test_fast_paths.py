"""The fast computation of the searching blocks (per-path expand, strip-wise depthwise weight gradients)
gives the plain computation's outputs, gradients and BN statistics."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from hrnas.models import build_model
from hrnas.models.depthwise import depthwise_conv2d, uses_strips
from hrnas.models.searching_block import PathBatchNorm, PathExpansion

CL = torch.channels_last


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("k,stride,width,height", [(3, 1, 20, 17), (5, 1, 20, 17), (7, 1, 21, 17), (5, 2, 20, 17),
                                                   (7, 2, 21, 17), (7, 1, 64, 1), (5, 1, 5, 13), (7, 1, 7, 10)])
def test_depthwise_strips_match_conv2d(k, stride, width, height):
    torch.manual_seed(k + stride)
    channels = 12
    x64 = torch.randn(2, channels, height, width, dtype=torch.float64)
    w64 = torch.randn(channels, 1, k, k, dtype=torch.float64)
    ref_x, ref_w = (t.clone().requires_grad_() for t in (x64, w64))
    ref = F.conv2d(ref_x, ref_w, stride=stride, padding=k // 2, groups=channels)
    g = torch.randn_like(ref)
    ref.backward(g)
    # float32, channels_last, a channel slice of a wider tensor as in the block
    wide = torch.randn(2, channels + 5, height, width).contiguous(memory_format=CL)
    wide[:, 3:3 + channels] = x64.float()
    x = wide[:, 3:3 + channels].detach().requires_grad_()
    w = w64.float().requires_grad_()
    assert uses_strips(x, w, stride) == (k > 3 and stride == 1)
    assert not uses_strips(wide[..., :k - 1].repeat(1, 1, 64, 1), w, 1)  # fewer columns than the kernel
    out = depthwise_conv2d(x, w, stride, k // 2)
    out.backward(g.float())
    assert _rel(out, ref) < 1e-6
    assert _rel(x.grad, ref_x.grad) < 1e-6
    assert _rel(w.grad, ref_w.grad) < 1e-6
    assert x.grad.shape == x.shape and w.grad.shape == w.shape


def test_strips_are_not_used_where_they_do_not_apply():
    w = torch.randn(4, 1, 7, 7, requires_grad=True)
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=CL)
    assert uses_strips(x, w, 1)
    assert not uses_strips(x, w, 2)
    assert not uses_strips(x[..., :7], w, 1)  # fewer than 64 pixels
    assert not uses_strips(x.contiguous(), w, 1)  # NCHW
    assert not uses_strips(x.double(), w.double(), 1)
    with torch.no_grad():
        assert not uses_strips(x, w, 1)


def test_path_expansion_and_bn_equal_one_conv_and_bn():
    torch.manual_seed(0)
    expand, bn = PathExpansion(6, 9), PathBatchNorm(9, eps=1e-3, momentum=0.1)
    ref_bn = copy.deepcopy(bn)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        ref_bn.load_state_dict(bn.state_dict())
    x = torch.randn(3, 6, 5, 7, dtype=torch.float64)
    expand, bn, ref_bn = expand.double(), bn.double(), ref_bn.double()
    for training in (True, False):
        bn.train(training), ref_bn.train(training)
        ref = ref_bn(F.conv2d(x, expand.weight))
        paths = bn(expand(x, (2, 3, 4)))
        assert [p.shape[1] for p in paths] == [2, 3, 4]
        assert torch.allclose(torch.cat(paths, 1), ref, rtol=0, atol=1e-12)
        for name, a in ref_bn.named_buffers():
            assert torch.allclose(a.double(), getattr(bn, name).double(), rtol=0, atol=1e-14), name
    assert int(bn.num_batches_tracked) == 1


def _step(net, x, y, fmt):
    net = net.to(memory_format=fmt)
    out = net(x.contiguous(memory_format=fmt))
    loss = F.cross_entropy(F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False), y)
    loss.backward()
    return loss.item()


def test_fast_paths_equal_plain_paths_on_a_small_supernet():
    """The benchmark's comparison: the fast channels_last step against the plain step, on a small
    Cityscapes super network (all three kernels, stride-1 and stride-2 blocks, SE on the hidden features)."""
    torch.manual_seed(0)
    plain = build_model("cityscapes", expand_ratio=1, se_ratio=0.5).train()
    plain.set_fast_paths(False)
    fast = copy.deepcopy(plain)
    fast.set_fast_paths(True)
    assert not any(b.fast_paths for _, b in plain.searching_blocks())
    x, y = torch.randn(2, 3, 64, 96), torch.randint(0, 19, (2, 64, 96))
    # float64, same layout: the same computation up to the order of additions
    p64, f64 = copy.deepcopy(plain).double(), copy.deepcopy(fast).double()
    loss_plain, loss_fast = (_step(net, x.double(), y, torch.contiguous_format) for net in (p64, f64))
    assert abs(loss_plain - loss_fast) < 1e-12
    for (name, a), b in zip(p64.named_parameters(), f64.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-8, atol=1e-12), name
    for (name, a), b in zip(p64.named_buffers(), f64.buffers()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-10, atol=1e-12), name
    # float32: fast channels_last (strips in use) against plain channels_last and against plain NCHW
    ref = copy.deepcopy(p64)
    ref.zero_grad()
    loss64 = _step(ref, x.double(), y, torch.contiguous_format)
    plain_cl = copy.deepcopy(plain)
    losses = {"fast": _step(fast, x, y, CL), "plain-cl": _step(plain_cl, x, y, CL),
              "plain-nchw": _step(plain, x, y, torch.contiguous_format)}
    assert all(abs(v - loss64) < 1e-4 for v in losses.values()), losses
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    for label, net in (("fast", fast), ("plain-cl", plain_cl), ("plain-nchw", plain)):
        errs = sorted(_rel(p.grad, ref_grads[n]) for n, p in net.named_parameters())
        # float32 rounding against float64 (measured: median 1e-3 channels_last, 2e-4 NCHW; max 2e-2)
        assert errs[len(errs) // 2] < 5e-3 and errs[-1] < 5e-2, label
    # the fast path adds almost nothing to the layout's own rounding (measured: median 5e-7, max 6e-4)
    errs = sorted(_rel(b.grad, a.grad) for a, b in zip(plain_cl.parameters(), fast.parameters()))
    assert errs[len(errs) // 2] < 1e-5 and errs[-1] < 3e-3


def test_profile_and_the_search_see_the_same_network_in_both_computations():
    """The plain computation calls the depthwise convs through their modules, so the profiler's hooks (and the
    search's MACs accounting built on them) count them: a plain and a fast network profile alike."""
    from hrnas.profile import profile

    net = build_model("cityscapes", expand_ratio=1)
    net.set_fast_paths(True)
    fast = profile(net, (64, 128), on_meta=False)
    net.set_fast_paths(False)
    plain = profile(net, (64, 128), on_meta=False)
    assert plain.macs == fast.macs and plain.params == fast.params
    with pytest.raises(ValueError, match="fast_paths"):
        net.set_fast_paths("yes")


def test_auto_takes_the_fast_paths_for_the_blocks_with_many_hidden_activations():
    """``auto`` decides per block and input: the fast way from FAST_PATHS_MIN_ELEMENTS hidden activations
    (batch × Σh × H × W) on. In the tiny Cityscapes super network (expand ratio 1, batch 8, 64×128) that is the
    dense head's block alone (3 × 270 hidden channels at 16×32); at 256×512 every block at 1/4 resolution."""
    from hrnas.models.searching_block import FAST_PATHS_MIN_ELEMENTS

    net = build_model("cityscapes", expand_ratio=1)
    assert all(b.fast_paths == "auto" for _, b in net.searching_blocks())
    used = {}
    hooks = [b.register_forward_pre_hook(lambda m, args, name=name: used.__setitem__(name, m.uses_fast_paths(args[0])))
             for name, b in net.searching_blocks()]
    with torch.no_grad():
        net(torch.zeros(8, 3, 64, 128))
    assert [name for name, fast in used.items() if fast] == ["head.transform"]
    head = dict(net.searching_blocks())["head.transform"]
    assert 8 * 3 * 270 * 16 * 32 >= FAST_PATHS_MIN_ELEMENTS > 8 * 3 * 24 * 16 * 32  # head vs the widest other block
    used.clear()
    with torch.no_grad():
        net(torch.zeros(1, 3, 256, 512))
    widths = {name: b.inp for name, b in net.searching_blocks()}
    at_quarter = {info.name for info in net.feature_info if info.in_branch == 0 and info.out_branch == 0}
    assert {name for name in at_quarter if used[name]} == at_quarter, widths
    for h in hooks:
        h.remove()
    assert head.uses_fast_paths(torch.zeros(8, 270, 16, 32))
    net.set_fast_paths(False)
    assert not head.uses_fast_paths(torch.zeros(8, 270, 16, 32))


@pytest.mark.parametrize("inp,oup,stride,layout", [(270, 90, 1, CL), (18, 36, 1, CL), (36, 18, 1, CL), (24, 18, 1, CL),
                                                   (36, 18, 1, torch.contiguous_format), (18, 36, 2, CL)])
def test_grouped_shortcut_equals_the_grouped_convolution(inp, oup, stride, layout):
    """The shortcut's sum of its groups' products gives the grouped 1×1 convolution's output and gradients."""
    from hrnas.models.searching_block import GroupedShortcut

    torch.manual_seed(inp + oup)
    shortcut = GroupedShortcut(inp, oup, stride)
    assert shortcut.groups == math.gcd(inp, oup) and isinstance(shortcut, torch.nn.Conv2d)
    x = torch.randn(2, inp, 9, 11).contiguous(memory_format=layout).requires_grad_()
    out = shortcut(x)
    ref = F.conv2d(x, shortcut.weight, None, stride, 0, 1, shortcut.groups)
    assert out.shape == ref.shape and _rel(out, ref) < 1e-6
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, (x, shortcut.weight), g)
    ref_grads = torch.autograd.grad(ref, (x, shortcut.weight), g)
    assert all(_rel(a, b) < 1e-6 for a, b in zip(grads, ref_grads))
