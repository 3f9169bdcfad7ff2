"""The ablation tables (hrnas.ablation): rows as the paper's, each row's added cost against hand-computed
formulas, the seed statistics on known numbers, Non-local's identity init, the CLI's bad input, and a smoke
run of both tables."""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from hrnas import ablation as A
from hrnas.cli import main as hrnas_main
from hrnas.models import build_model, spec_of
from hrnas.models.non_local import NonLocal
from hrnas.viz.tables import paper_table

# resolution (H·W at 512×1024) of the residual blocks by their width: branches at 1/4, 1/8, 1/16, 1/32
RES_HW = {18: 128 * 256, 24: 128 * 256, 36: 64 * 128, 72: 32 * 64, 144: 16 * 32}


@pytest.fixture(scope="module")
def baseline():
    """A small Cityscapes network without attention (widths cut to a third): a stand-in searched baseline."""
    spec = spec_of(build_model("cityscapes", expand_ratio=1, attention="none"))
    for block in spec["blocks"]:
        block["hidden"] = [max(1, h // 3) for h in block["hidden"]]
    return spec


def residual_widths(spec):
    return [b["inp"] for b in spec["blocks"] if b["stride"] == 1 and b["inp"] == b["oup"]]


def test_rows_follow_the_paper_and_shared_rows_are_one_experiment():
    for table in A.TABLES:
        assert list(A.rows_of(table)) == list(paper_table(table)["variant"])
    t1, t2 = A.rows_of("table1"), A.rows_of("table2")
    assert t1["Baseline"].key == t2["Baseline"].key == "baseline"
    assert t1["s=8x8"].key == t2["Enc + Dec (channel)"].key
    assert len({m.key for m in [*t1.values(), *t2.values()]}) == 10  # 12 rows, 10 experiments
    with pytest.raises(A.UserError, match="ablation table 'table3'"):
        A.rows_of("table3")


def test_row_costs_equal_hand_computed_deltas(baseline):
    costs = A.row_costs("table1", baseline)
    widths = residual_widths(baseline)
    assert len(widths) == 44
    n = 8
    for s in (2, 8, 16):
        d = s * s  # channel tokens: n tokens of dimension s²
        # authors' convention: convs (C+2)·n and n·C at s×s, the FFN linears 4·d² (2 per layer), encoder
        # attention 2·L²·E + 4·L·E², each FFN linear counted as L MACs
        params = sum(4 * d * d + n * (c + 2) + n * c for c in widths)
        macs = sum(n * d * (2 * c + 2) + 2 * n * n * d + 4 * n * d * d + 4 * n for c in widths)
        assert costs.loc[f"s={s}x{s}", "Params"] - costs.loc["Baseline", "Params"] == pytest.approx(params / 1e6, abs=1e-9)
        assert costs.loc[f"s={s}x{s}", "FLOPs"] - costs.loc["Baseline", "FLOPs"] == pytest.approx(macs / 1e9, abs=1e-12)
    costs2 = A.row_costs("table2", baseline)
    assert costs2.loc["Baseline"].tolist() == costs.loc["Baseline"].tolist()
    # Enc (spatial): s² = 64 tokens of dimension n = 8, two FFN linears
    e, length = n, 64
    macs = sum(n * 64 * (2 * c + 2) + 2 * length * length * e + 4 * length * e * e + 2 * length for c in widths)
    assert (costs2.loc["Enc (spatial)", "FLOPs"] - costs2.loc["Baseline", "FLOPs"]) * 1e9 == pytest.approx(macs)
    # Non-local in the residual blocks of the 1/8 branch (11 of width 36): θ, φ, g (C → round(3.5·C) = 126)
    # and the output conv; keys/values pooled 2×2; the attention matmuls are invisible to the authors' profiler
    branch = {info.name: info.out_branch for info in build_model(arch=baseline).feature_info}
    eighth = [b["inp"] for b in baseline["blocks"]
              if b["stride"] == 1 and b["inp"] == b["oup"] and branch[b["name"]] == 1]
    assert eighth == [36] * 11
    params = sum(4 * c * 126 for c in eighth)
    macs = sum(c * 126 * RES_HW[c] * 2.5 for c in eighth)
    assert (params, macs) == (199_584, 1_021_870_080)
    assert (costs2.loc["Non-local", "Params"] - costs2.loc["Baseline", "Params"]) * 1e6 == pytest.approx(params)
    assert (costs2.loc["Non-local", "FLOPs"] - costs2.loc["Baseline", "FLOPs"]) * 1e9 == pytest.approx(macs)
    # SE (the authors' fused block): reduce Σh → round(inp/2) and back, with biases, in every block with paths;
    # the authors' profiler omits the fused blocks' shortcut convs (groups = gcd(inp, oup))
    # FLOPs: the gate's C·H·W rule (its pooling, at the block's output resolution) plus its two 1×1 convs, minus
    # the omitted shortcut convs (docs/design.md: why the paper's +0.001 G is out of reach)
    params = pooling = convs = shortcuts = 0
    hw = {info.name: 128 * 256 // 4 ** info.out_branch for info in build_model(arch=baseline).feature_info}
    for b in baseline["blocks"]:
        area = hw[b["name"]]
        if b["inp"] != b["oup"] or b["stride"] != 1:
            params -= b["inp"] * b["oup"] // math.gcd(b["inp"], b["oup"])
            shortcuts += b["inp"] * b["oup"] // math.gcd(b["inp"], b["oup"]) * area
        h, r = sum(b["hidden"]), max(1, round(b["inp"] * 0.5))
        params += 2 * h * r + h + r if h else 0
        pooling += h * area
        convs += 2 * h * r
    assert (costs2.loc["SE", "Params"] - costs2.loc["Baseline", "Params"]) * 1e6 == pytest.approx(params)
    assert (costs2.loc["SE", "FLOPs"] - costs2.loc["Baseline", "FLOPs"]) * 1e9 == pytest.approx(
        pooling + convs - shortcuts)


def test_no_baseline_reproduces_all_five_printed_table1_totals(baseline):
    """Table 1's FLOPs column prints totals to 3 decimals. With the transformer deltas of the authors' code (ours
    equal them: 224,000 / 1,162,112 / 8,969,600 / 105,080,192 MACs, independent of the searched widths), each
    printed total confines the baseline B to a 1 M-MAC window; s = 2's (1.863: B < 1.863276 G) and s = 16's
    (1.969: B >= 1.86342 G) do not overlap, so no searched baseline can match all five totals, and the paper's
    +0.106 for s = 16 (1.969 - 1.863) cannot be met with +0.105 exact (docs/design.md)."""
    costs = A.row_costs("table1", baseline)
    deltas = ((costs["FLOPs"] - costs.loc["Baseline", "FLOPs"]) * 1e9).round().astype(int)
    assert deltas.tolist() == [0, 224_000, 1_162_112, 8_969_600, 105_080_192]
    printed = paper_table("table1").set_index("variant")["flops_G"]
    lows = {row: (printed[row] - 0.0005) * 1e9 - deltas[row] for row in deltas.index}
    highs = {row: (printed[row] + 0.0005) * 1e9 - deltas[row] for row in deltas.index}
    assert highs["s=2x2"] == pytest.approx(1_863_276_000) and lows["s=16x16"] == pytest.approx(1_863_419_808)
    assert max(lows.values()) > min(highs.values())  # the windows have no common point


def test_seed_statistics_on_known_numbers():
    assert A.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0, 3)
    mean, std, n = A.mean_std([5.0])
    assert (mean, n) == (5.0, 1) and math.isnan(std)
    # differences 2, 3, 4: mean 3, sd 1, t(0.975, 2) = 4.302653 → half width 4.302653 / √3 = 2.484138
    d, lo, hi = A.paired_difference([3.0, 5.0, 7.0], [1.0, 2.0, 3.0])
    assert d == 3.0 and lo == pytest.approx(3 - 2.484138, abs=1e-6) and hi == pytest.approx(3 + 2.484138, abs=1e-6)
    # pairing matters: the same values unpaired would give a wider interval
    d, lo, hi = A.paired_difference([10.0, 20.0], [9.0, 19.0])
    assert (d, lo, hi) == (1.0, 1.0, 1.0)


def test_table_reports_mean_std_and_paired_differences(baseline):
    costs = A.row_costs("table1", baseline)
    lines = [{"row": r, "seed": s, "mIoU(%)": v + 10 * i, "mACC(%)": 50.0, "aACC(%)": 80.0}
             for i, r in enumerate(A.rows_of("table1")) for s, v in ((1, 20.0), (2, 22.0), (3, 27.0))]
    table, caption = A.build_table("table1", costs, pd.DataFrame(lines), "SYNTHETIC data, preset smoke")
    assert list(table["Input size"]) == list(paper_table("table1")["variant"])
    assert table.columns[:6].tolist() == ["Input size", "Params", "FLOPs", "mIoU(%)", "mACC(%)", "aACC(%)"]
    row = table.set_index("Input size").loc["s=4x4"]
    assert row["mIoU(%)"] == pytest.approx(43.0) and row["mIoU(%) std"] == pytest.approx(np.std([20, 22, 27], ddof=1))
    assert row["Δ mIoU(%)"] == pytest.approx(20.0) and row["Δ mIoU(%) lo"] == row["Δ mIoU(%) hi"] == pytest.approx(20.0)
    assert row["seeds"] == 3 and row["paper mIoU(%)"] == 73.32
    assert row["paper Δ mIoU(%)"] == pytest.approx(73.32 - 71.99)
    assert "3 seeds" in caption and "not ours" in caption


def test_nonlocal_starts_as_identity_after_the_network_init():
    net = build_model("cityscapes", attention="nonlocal", expand_ratio=1)
    blocks = [m for m in net.modules() if isinstance(m, NonLocal)]
    assert len(blocks) == 44
    assert all(torch.count_nonzero(b.norm.weight) == 0 for b in blocks)
    other = [m for n, m in net.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and ".non_local." not in n]
    assert all(torch.all(m.weight == 1) for m in other)
    b = blocks[0].eval()
    assert torch.count_nonzero(b(torch.randn(1, b.theta.in_channels, 8, 8))) == 0


def test_attention_branches_and_nonlocal_width_place_the_table2_module():
    net = build_model("cityscapes", attention="nonlocal", attention_branches=[1], nonlocal_ratio=3.5, expand_ratio=1)
    branch = {info.name: info.out_branch for info in net.feature_info}
    placed = {m.block_name: m.non_local for m in net.modules() if getattr(m, "non_local", None) is not None}
    assert len(placed) == 11 and {branch[name] for name in placed} == {1}
    assert {(nl.theta.in_channels, nl.theta.out_channels, nl.out.in_channels) for nl in placed.values()} == {(36, 126, 126)}
    spec = A.row_arch(spec_of(build_model("cityscapes", expand_ratio=1, attention="none")), A.rows_of("table2")["Non-local"])
    assert sum(isinstance(m, NonLocal) for m in build_model(arch=spec).modules()) == 11
    for bad, needle in ((dict(attention_branches=[-1]), "attention_branches"), (dict(attention_branches=[]), "attention_branches"),
                        (dict(nonlocal_ratio=0), "nonlocal_ratio")):
        with pytest.raises(A.UserError, match=needle):
            build_model("cityscapes", attention="nonlocal", **bad)


@pytest.mark.parametrize("argv,needle", [
    (["table3"], "ablation table 'table3'"),
    (["table1", "--seeds", "0"], "--seeds 0"),
    (["table1", "--arch", "no_such_arch.json"], "no such file"),
    (["table1", "--preset", "huge"], "--preset 'huge'"),
])
def test_bad_input_exits_2_with_one_line(argv, needle, capsys, tmp_path):
    assert hrnas_main(["ablation", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_arch_of_another_task_or_with_attention_exits_2(capsys, tmp_path, baseline):
    other = tmp_path / "imagenet.json"
    other.write_text(json.dumps(spec_of(build_model("imagenet", expand_ratio=1))))
    assert hrnas_main(["ablation", "table1", "--arch", str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "not 'cityscapes'" in err and len(err.splitlines()) == 1
    with_attention = tmp_path / "t.json"
    with_attention.write_text(json.dumps(A.row_arch(baseline, A.rows_of("table1")["s=8x8"])))
    assert hrnas_main(["ablation", "table2", "--arch", str(with_attention), "--out", str(tmp_path / "o")]) == 2
    assert "without attention" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_tables_from_the_cli(tmp_path, capsys):
    """Both tables at smoke (2 seeds): one baseline search, Table 2 reuses Table 1's shared rows."""
    out = tmp_path / "abl"
    assert hrnas_main(["ablation", "table1", "--preset", "smoke", "--out", str(out), "--no-progress"]) == 0
    assert hrnas_main(["ablation", "table2", "--preset", "smoke", "--out", str(out), "--no-progress",
                       "--jobs", "2"]) == 0
    t1 = pd.read_csv(out / "ablation_table1_smoke.csv").set_index("Input size")
    t2 = pd.read_csv(out / "ablation_table2_smoke.csv").set_index("Input size")
    assert (t1["seeds"] == 2).all() and (t2["seeds"] == 2).all()
    assert {"mIoU(%) std", "Δ mIoU(%)", "Δ mIoU(%) lo", "Δ mIoU(%) hi", "paper mIoU(%)"} <= set(t1.columns)
    assert t1.loc["Baseline", "FLOPs"] == pytest.approx(1.863, rel=0.05)  # the paper's baseline cost
    added = (t1["FLOPs"] - t1.loc["Baseline", "FLOPs"]).round(3)
    assert added[["s=2x2", "s=4x4", "s=8x8"]].tolist() == [0.000, 0.001, 0.009]  # the paper's, printed
    assert 0.104 <= added["s=16x16"] <= 0.107  # paper +0.106 (both its numbers rounded: 0.105..0.107)
    for row in ("Baseline", "s=8x8"):  # the same experiment: trained once
        other = "Enc + Dec (channel)" if row == "s=8x8" else row
        assert t1.loc[row, "mIoU(%)"] == t2.loc[other, "mIoU(%)"]
    runs = {p.parent.parent.name for p in out.glob("*/seed*/run.json")}
    assert len(runs) == 10 and len(list(out.glob("*/seed*/run.json"))) == 20
    assert (out / "baseline_arch.json").is_file() and (out / "ablation_table2_smoke.png").is_file()
    assert t2.loc["Non-local", "FLOPs"] > t2.loc["SE", "FLOPs"]
    # --jobs 2 ran Table 2's new rows largest first: each row still reports the runs of its own folder
    for row, module in A.rows_of("table2").items():
        runs = [json.loads(p.read_text()) for p in sorted((out / module.key).glob("seed*/run.json"))]
        assert t2.loc[row, "mIoU(%)"] == pytest.approx(100 * np.mean([r["metrics"]["mIoU"] for r in runs]))


def test_runs_take_one_thread_and_give_the_callers_back():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with A.one_thread():
            assert torch.get_num_threads() == A.THREADS == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_longest_first_orders_by_decreasing_weight_ties_kept():
    assert A.longest_first([1.685, 13.264, 2.45, 13.264, 1.685]) == [1, 3, 2, 0, 4]
    assert A.longest_first([]) == []


def test_chance_level_from_the_label_frequencies(tmp_path):
    from PIL import Image

    for split, rows in (("train", [0, 0, 1, 1]), ("val", [0, 1, 1, 1])):
        folder = tmp_path / "gtFine" / split / "city"
        folder.mkdir(parents=True)
        label = np.repeat(np.array(rows, np.uint8)[:, None], 4, axis=1)
        label[0, 0] = 255  # ignored pixels do not count
        Image.fromarray(label).save(folder / "city_000000_000019_gtFine_labelTrainIds.png")
    # without the ignored pixel: train class 0: 7 px, class 1: 8 px; val class 0: 3 px, class 1: 12 px
    q = np.array([7, 8]) / 15
    p = np.array([3, 12]) / 15
    expected = 100 * np.mean(p * q / (p + q - p * q))
    assert A.chance_miou(tmp_path) == pytest.approx(expected)
