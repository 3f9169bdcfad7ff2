"""hrnas.viz.tables: save_table (csv/md/tex), the supplement tables and reference results shipped as data."""
import math

import pandas as pd
import pytest

from hrnas.errors import UserError
from hrnas.viz import tables as T

def _md_rows(text: str) -> list[list[str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    rows = []
    for ln in lines[2:]:  # header, rule
        cells, cur, i = [], "", 1
        while i < len(ln):
            ch = ln[i]
            if ch == "\\" and i + 1 < len(ln):
                cur += ln[i + 1]
                i += 2
                continue
            if ch == "|":
                cells.append(cur.strip())
                cur = ""
            else:
                cur += ch
            i += 1
        rows.append(cells)
    return rows


def _tex_rows(text: str) -> list[list[str]]:
    body = text.split("\\midrule\n", 1)[1].split("\\bottomrule", 1)[0]
    return [ln.rstrip().removesuffix("\\\\").rstrip().split(" & ") for ln in body.strip().splitlines()]


def _unescape_tex(s: str) -> str:
    for raw, esc in T._LATEX_SPECIAL.items():
        if raw != "\\":
            s = s.replace(esc, raw)
    return s.replace(r"\textbackslash{}", "\\")


@pytest.fixture
def frame():
    return pd.DataFrame({
        "variant": ["Baseline", "s=2x2", "a_b & 50%", "x|y"],
        "params_M": [1.12, 1.18, float("nan"), 18.543],
        "count": [1, 2, 3, 4],
    })


def test_save_table_writes_three_files_with_same_rows(frame, tmp_path):
    paths = T.save_table(frame, "tab_test", tmp_path / "figs", caption="Ablation: 50% & more")
    assert set(paths) == {"csv", "md", "tex"}
    assert [p.name for p in paths.values()] == ["tab_test.csv", "tab_test.md", "tab_test.tex"]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["tab_test.csv", "tab_test.md", "tab_test.tex"]

    back = pd.read_csv(paths["csv"])
    pd.testing.assert_frame_equal(back, frame)  # full precision, no index column

    md_rows = _md_rows(paths["md"].read_text())
    tex_rows = _tex_rows(paths["tex"].read_text())
    assert len(md_rows) == len(tex_rows) == len(frame)
    assert [r[0] for r in md_rows] == list(frame["variant"])
    assert [_unescape_tex(r[0]) for r in tex_rows] == list(frame["variant"])
    for md, tex, (_, rec) in zip(md_rows, tex_rows, frame.iterrows()):
        for j, value in enumerate(rec):
            expected = "" if isinstance(value, float) and math.isnan(value) else str(value)
            assert md[j] == expected
            assert _unescape_tex(tex[j]) == expected
    tex = paths["tex"].read_text()
    assert r"\caption{Ablation: 50\% \& more}" in tex and r"\label{tab:tab_test}" in tex
    assert paths["md"].read_text().rstrip().endswith("Table: Ablation: 50% & more")


def test_latex_writers_agree(frame):
    ours = T.latex_table(frame, caption="c", label="tab:x", use_pandas=False)
    theirs = T.latex_table(frame, caption="c", label="tab:x", use_pandas=True)
    assert _tex_rows(ours) == _tex_rows(theirs)
    assert r"\begin{tabular}{lrr}" in ours and r"\begin{tabular}{lrr}" in theirs


def test_float_format_and_index(tmp_path):
    df = pd.DataFrame({"miou": [74.2234, 71.99]}, index=pd.Index(["a", "b"], name="method"))
    paths = T.save_table(df, "t2", tmp_path, float_format=".2f")
    assert _md_rows(paths["md"].read_text()) == [["a", "74.22"], ["b", "71.99"]]
    assert _tex_rows(paths["tex"].read_text()) == [["a", "74.22"], ["b", "71.99"]]
    back = pd.read_csv(paths["csv"], index_col="method")
    assert back.loc["a", "miou"] == 74.2234  # the CSV keeps full precision


def test_markdown_alignment():
    text = T.markdown_table(pd.DataFrame({"name": ["a"], "value": [1.5]}))
    assert text.splitlines()[1] == "|------|------:|"


@pytest.mark.parametrize("stem", ["", "../x", "a/b", ".hidden", "a b"])
def test_save_table_rejects_bad_stem(frame, tmp_path, stem):
    with pytest.raises(UserError, match=r"^stem: .* is not a valid file stem"):
        T.save_table(frame, stem, tmp_path)


def test_save_table_rejects_bad_input(frame, tmp_path):
    with pytest.raises(UserError, match=r"^df: expected a pandas DataFrame, got list$"):
        T.save_table([1, 2], "x", tmp_path)
    with pytest.raises(UserError, match=r"^float_format: 'q' is not a float format spec"):
        T.save_table(frame, "x", tmp_path, float_format="q")
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"^figures_dir: .* exists and is not a directory$"):
        T.save_table(frame, "x", tmp_path / "file")


def test_paper_table1_rows_and_columns():
    df = T.paper_table("table1")
    assert list(df.columns) == ["variant", "params_M", "flops_G", "miou", "macc", "aacc"]
    assert list(df["variant"]) == ["Baseline", "s=2x2", "s=4x4", "s=8x8", "s=16x16"]
    row = df.set_index("variant").loc["s=8x8"]
    assert (row.params_M, row.flops_G, row.miou, row.macc, row.aacc) == (2.273, 1.872, 74.22, 82.36, 95.52)
    assert df.set_index("variant").loc["s=16x16", "params_M"] == 18.543
    assert df.attrs["paper_columns"] == ["Input size", "Params", "FLOPs", "mIoU(%)", "mACC(%)", "aACC(%)"]
    assert df.attrs["caption"].startswith("Table 1. Comparisons of different projection size s")


def test_paper_table2_and_aliases():
    df = T.paper_table("table2")
    assert len(df) == 7 and df["variant"].iloc[2] == "Non-local" and df["flops_G"].iloc[2] == 2.951
    pd.testing.assert_frame_equal(T.paper_table(2), df)
    pd.testing.assert_frame_equal(T.paper_table("Table 2"), df)
    with pytest.raises(UserError, match=r"^paper_table: unknown table 'table3'; available: table1, table2$"):
        T.paper_table("table3")


def test_packaged_paper_tables_hold_the_printed_rows():
    # spot checks against the supplement's printed Tables 1 and 2 (section 3)
    t1, t2 = T.paper_table(1).set_index("variant"), T.paper_table(2).set_index("variant")
    assert list(t1.index) == ["Baseline", "s=2x2", "s=4x4", "s=8x8", "s=16x16"]
    assert len(t2) == 7 and t2.index[0] == "Baseline" and "Enc + Dec (channel)" in t2.index
    assert t1.loc["Baseline", ["params_M", "flops_G", "miou"]].tolist() == [1.120, 1.863, 71.99]
    assert t1.loc["s=16x16", ["params_M", "flops_G", "miou"]].tolist() == [18.543, 1.969, 74.18]
    assert t2.loc["SE", ["params_M", "flops_G"]].tolist() == [2.101, 1.864]
    assert t2.loc["Non-local", ["params_M", "flops_G", "macc"]].tolist() == [1.317, 2.951, 81.32]
    # the full model of Table 2 is the s = 8 row of Table 1
    assert (t2.loc["Enc + Dec (channel)"] == t1.loc["s=8x8"]).all()


def test_reference_results_structure_and_sources():
    df = T.reference_results()
    assert list(df.columns) == list(T.REFERENCE_COLUMNS)
    assert set(df["task"]) == {"cityscapes", "ade20k", "coco", "kitti", "imagenet"}
    assert df["source"].notna().all() and (df["source"].str.len() > 10).all()
    assert set(df["confidence"]) <= set(T.REFERENCE_CONFIDENCE)
    assert set(df["split"]) <= {"val", "test"}
    assert pd.api.types.is_float_dtype(df["value"]) and df["value"].notna().all()
    assert not df.duplicated(["task", "method", "metric", "input_size", "split"]).any()


def test_reference_results_agree_with_the_supplement():
    cs = T.reference_results("cityscapes")
    ours = cs[cs["confidence"] == "paper"].pivot_table(index="method", columns="metric", values="value")
    t1 = T.paper_table("table1").set_index("variant")
    for method, variant in (("supplement baseline", "Baseline"), ("s=8", "s=8x8")):
        row = ours[ours.index.str.contains(method, regex=False)]
        assert len(row) == 1
        assert row["mIoU"].item() == t1.loc[variant, "miou"]
        assert row["mAcc"].item() == t1.loc[variant, "macc"]
        assert row["aAcc"].item() == t1.loc[variant, "aacc"]


def test_reference_results_filters():
    coco_ap = T.reference_results("coco", metric="ap")
    assert set(coco_ap["metric"]) == {"AP"}
    w32 = coco_ap[(coco_ap["method"] == "HRNet-W32") & (coco_ap["input_size"] == "256x192")]
    assert w32["value"].tolist() == [74.4] and w32["macs_G"].tolist() == [7.1]
    kitti = T.reference_results("kitti", metric="3D AP Car moderate (R11)")
    assert kitti["value"].tolist() == [74.99, 77.28] and kitti["split"].tolist() == ["test", "val"]
    with pytest.raises(UserError, match=r"^reference_results: unknown task 'voc'; available: ade20k, cityscapes, coco, imagenet, kitti$"):
        T.reference_results("voc")
    with pytest.raises(UserError, match=r"^reference_results: no metric 'zz' for task 'ade20k'"):
        T.reference_results("ade20k", metric="zz")


def test_every_published_number_names_a_source_a_reader_can_open():
    """Rows quoted from memory were checked or dropped: each row's source is a paper table, a repository
    file (with its path), or a GitHub thread; nothing in the packaged CSVs asks to be verified first."""
    import re
    from importlib import resources

    df = T.reference_results()
    assert df["confidence"].isin(T.REFERENCE_CONFIDENCE).all(), sorted(set(df["confidence"]))
    assert df["source"].notna().all() and (df["source"].str.strip().str.len() > 10).all()
    opener = re.compile(r"(?:Table \d|\.md\b|github\.com/[\w.-]+/[\w.-]+/(?:issues|pull)/\d+)")
    unopenable = df[~df["source"].str.contains(opener)]
    assert unopenable.empty, unopenable[["method", "metric", "source"]].to_string()
    issues = df[df["confidence"] == "issue"]
    assert issues["source"].str.contains(r"github\.com/.+/issues/\d+").all()
    for name in ("reference_results.csv", "paper_tables.csv"):
        assert "verify" not in resources.files("hrnas.configs").joinpath(name).read_text(encoding="utf-8").lower()
    text = resources.files("hrnas.configs").joinpath("reference_results.csv").read_text(encoding="utf-8")
    assert "shared/" not in text and "peers-and-metrics" not in text and ",mem," not in text
