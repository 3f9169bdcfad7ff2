"""hrnas.reproduce: strict parameters, dependency order, papermill batch runs, CLI exit codes.

Toy notebooks are written into tmp folders; the executed runs (6 tiny notebooks in all, about 1.5 s
each) are shared through module-scoped fixtures to keep the file fast.
"""
import json
import math
import os
import sys
from pathlib import Path

import nbformat
import pytest

import hrnas.reproduce as rp
from hrnas.cli import main as hrnas_main
from hrnas.errors import UserError
from hrnas.reproduce.execute import _failed_cell_from_output, _source_cell_index


def reproduce_main(argv) -> int:
    """`hrnas reproduce ARGV` through the package's CLI (exit status 0 / 1 / 2)."""
    return hrnas_main(["reproduce", *argv])


def make_nb(folder: Path, name: str, params_src: str | None, cells: list[str], depends=None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if depends is not None:
        nb.metadata["hrnas"] = {"depends": depends}
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {name}"))
    if params_src is not None:
        cell = nbformat.v4.new_code_cell(params_src)
        cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nb.cells.extend(nbformat.v4.new_code_cell(c) for c in cells)
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


ALPHA_PARAMS = (
    'preset: str = "tiny"  # tiny|smoke|paper\n'
    "n: int = 3  # number of things\n"
    'out_dir: str = "."  # run folder\n'
    'figures_dir: str = "../figures"  # figures folder\n'
    "progress: bool = True  # progress bars\n"
)
ALPHA_CELLS = [
    "import os, sys\nfrom hrnas.reproduce import record_metrics",
    "record_metrics(out_dir, '02_alpha', {'total': n * 2, 'python': sys.executable, 'preset': preset,\n"
    "               'progress': progress, 'cwd': os.getcwd(), 'figures_dir': figures_dir}, key=['total'])",
]
BETA_PARAMS = "scale: float = 1.0  # a factor\nflag: bool = False  # a switch\n"
BETA_CELLS = ["x = scale * 2", "y = 1 / 0", "z = 3"]          # source cells 2, 3, 4: raises in cell 3
GAMMA_PARAMS = 'out_dir: str = "."  # run folder\n'
GAMMA_CELLS = [
    "from hrnas.reproduce import read_metrics, record_metrics\n"
    "a = read_metrics(out_dir, '02_alpha')['metrics']['total']",
    "record_metrics(out_dir, '00_gamma', {'from_alpha': a + 1})",
]


def write_toys(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    # 00_gamma needs 02_alpha (so it must run after it despite its number); 03_delta needs the failing 01_beta
    make_nb(folder, "00_gamma", GAMMA_PARAMS, GAMMA_CELLS, depends=["alpha"])
    make_nb(folder, "01_beta", BETA_PARAMS, BETA_CELLS)
    make_nb(folder, "02_alpha", ALPHA_PARAMS, ALPHA_CELLS)
    make_nb(folder, "03_delta", None, ["print('never runs')"], depends=["01_beta.ipynb"])
    (folder / "scratch.ipynb").write_text("not a numbered notebook: ignored")
    return folder


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    return write_toys(tmp_path_factory.mktemp("nbs"))


@pytest.fixture(scope="module")
def batch(toys, tmp_path_factory):
    base = tmp_path_factory.mktemp("batch")
    out, figs = base / "runs", base / "figs"
    results = rp.reproduce(notebooks_dir=toys, out=out, figures_dir=figs, progress=False,
                           params={"scale": "2", "n": "5"})
    return {r.name: r for r in results}, [r.name for r in results], out, figs


# ------------------------------------------------------------------------------------------
# discovery and order
def test_dependency_order_topological_ties_by_number(toys):
    # 01 and 02 are free; 03_delta becomes ready after 01, 00_gamma after 02 -> 00 before 03
    assert rp.notebook_order(toys) == ["01_beta", "02_alpha", "00_gamma", "03_delta"]
    infos = {i.name: i for i in rp.discover_notebooks(toys)}
    assert set(infos) == {"00_gamma", "01_beta", "02_alpha", "03_delta"}
    assert infos["00_gamma"].depends == ("02_alpha",)
    assert infos["03_delta"].depends == ("01_beta",)


def test_ties_broken_by_number_not_by_name(tmp_path):
    for name in ("10_b", "9_a", "100_c"):
        make_nb(tmp_path, name, None, [])
    assert rp.notebook_order(tmp_path) == ["9_a", "10_b", "100_c"]


def test_notebook_order_attribute_follows_default_folder(toys, monkeypatch):
    monkeypatch.setattr(rp, "DEFAULT_NOTEBOOKS_DIR", toys)
    assert rp.NOTEBOOK_ORDER == ("01_beta", "02_alpha", "00_gamma", "03_delta")
    monkeypatch.setattr(rp, "DEFAULT_NOTEBOOKS_DIR", toys / "missing")
    assert rp.NOTEBOOK_ORDER == ()


def test_dependency_cycle_and_unknown_dependency(tmp_path):
    make_nb(tmp_path, "00_a", None, [], depends=["01_b"])
    make_nb(tmp_path, "01_b", None, [], depends=["00_a"])
    with pytest.raises(UserError, match=r"^metadata\.hrnas\.depends: dependency cycle among notebooks 00_a, 01_b$"):
        rp.notebook_order(tmp_path)
    make_nb(tmp_path, "01_b", None, [], depends=["zz"])
    with pytest.raises(UserError, match=r"^01_b: metadata\.hrnas\.depends: unknown notebook 'zz'; available: 00_a, 01_b$"):
        rp.notebook_order(tmp_path)


def test_match_notebook_forms():
    names = ["00_intro", "02_seg", "02_seg_b", "10_pose"]
    assert rp.match_notebook("seg", names) == "02_seg"
    assert rp.match_notebook("02_seg.ipynb", names) == "02_seg"
    assert rp.match_notebook("notebooks/10_pose.ipynb", names) == "10_pose"
    assert rp.match_notebook("10", names) == "10_pose"
    with pytest.raises(UserError, match=r"^--only: notebook name '2' is ambiguous: 02_seg, 02_seg_b$"):
        rp.match_notebook("2", names)
    with pytest.raises(UserError, match=r"^--only: unknown notebook 'nope'; available: 00_intro, 02_seg, 02_seg_b, 10_pose$"):
        rp.match_notebook("nope", names)


def test_with_deps_selection(toys):
    listing = rp.list_notebooks(["gamma"], toys, with_deps=True)
    names = [ln for ln in listing.splitlines() if not ln.startswith(" ")]
    assert names == ["02_alpha", "00_gamma  (depends: 02_alpha)"]
    assert "    n: int = 3  # number of things" in listing


# ------------------------------------------------------------------------------------------
# parameters
def test_inspect_parameters(toys, tmp_path):
    p = rp.inspect_parameters(toys / "02_alpha.ipynb")
    assert list(p) == ["preset", "n", "out_dir", "figures_dir", "progress"]
    assert p["n"] == {"type": "int", "default": 3, "help": "number of things", "choices": None}
    assert p["preset"]["choices"] == ("tiny", "smoke", "paper")
    assert p["progress"]["default"] is True
    # same names and help as papermill's own inspector on an ordinary cell
    import papermill as pm

    ref = pm.inspect_notebook(str(toys / "02_alpha.ipynb"))
    assert {k: v["help"] for k, v in ref.items()} == {k: v["help"] for k, v in p.items()}
    # cases papermill's regex gets wrong: '#' inside a string, `X | None`, no annotation, multi-line
    src = ('color: str = "#ff0000"  # line colour\n'
           "root: str | None = None  # data root\n"
           "seed = 7  # random seed\n"
           "sizes: list[int] = [\n    1, 2]  # sizes\n"
           "when = dict(a=1)  # not a literal\n")
    q = rp.inspect_parameters(make_nb(tmp_path, "00_x", src, []))
    assert q["color"] == {"type": "str", "default": "#ff0000", "help": "line colour", "choices": None}
    assert q["root"]["type"] == "str | None" and q["root"]["default"] is None
    assert q["seed"]["type"] == "int" and q["seed"]["help"] == "random seed"
    assert q["sizes"]["default"] == [1, 2] and q["sizes"]["help"] == "sizes"
    assert q["when"]["default"] == "dict(a=1)" and q["when"]["type"] == "any"


def test_strict_unknown_parameter_message(toys):
    with pytest.raises(UserError) as err:
        rp.check_parameters(toys / "02_alpha.ipynb", {"nn": 1})
    assert str(err.value) == "02_alpha: unknown parameter 'nn'; accepted: figures_dir, n, out_dir, preset, progress"
    with pytest.raises(UserError, match=r"^03_delta: unknown parameter 'x'; accepted: \(none: no cell tagged parameters\)$"):
        rp.check_parameters(toys / "03_delta.ipynb", {"x": 1})


@pytest.mark.parametrize("name, value, message", [
    ("n", "abc", "02_alpha: parameter 'n' expects int, got 'abc'"),
    ("n", "1.5", "02_alpha: parameter 'n' expects int, got '1.5'"),
    ("n", True, "02_alpha: parameter 'n' expects int, got True"),
    ("progress", "maybe", "02_alpha: parameter 'progress' expects bool (true/false/1/0/yes/no), got 'maybe'"),
    ("preset", "huge", "02_alpha: parameter 'preset' = 'huge' is not one of tiny|smoke|paper"),
    ("out_dir", 12, "02_alpha: parameter 'out_dir' expects str, got 12"),
])
def test_strict_wrong_type_messages(toys, name, value, message):
    with pytest.raises(UserError) as err:
        rp.check_parameters(toys / "02_alpha.ipynb", {name: value})
    assert str(err.value) == message
    assert "\n" not in str(err.value)


def test_conversions(tmp_path):
    src = ("n: int = 1  # n\nlr: float = 0.1  # lr\nflag: bool = False  # flag\n"
           "sizes: list[int] = [1]  # sizes\nnames: list = []  # names\ncfg: dict = {}  # cfg\n"
           "root: Optional[str] = None  # root\nmaybe: int | None = None  # maybe\npair: tuple[float, ...] = (1.0,)  # pair\n"
           "path: Path = 'x'  # a path\n")
    nb = make_nb(tmp_path, "00_t", src, [])
    ok = {
        "n": [("5", 5), (" -7 ", -7), (3.0, 3), (4, 4)],
        "lr": [("1e-3", 1e-3), (2, 2.0), ("inf", math.inf)],
        "flag": [("true", True), ("No", False), ("1", True), ("0", False), ("YES", True), (True, True)],
        "sizes": [("[1, 2]", [1, 2]), ("[3]", [3]), ((4, 5), [4, 5]), ("['6']", [6])],
        "names": [('["a", "b"]', ["a", "b"]), ("[a, b]", ["a", "b"])],
        "cfg": [("{a: 1}", {"a": 1}), ('{"b": [1]}', {"b": [1]})],
        "root": [("none", None), ("data/x", "data/x"), (None, None)],
        "maybe": [("null", None), ("4", 4)],
        "pair": [("[1, 2.5]", (1.0, 2.5))],
        "path": [(tmp_path, str(tmp_path)), ("p", "p")],
    }
    for name, cases in ok.items():
        for given, expected in cases:
            assert rp.check_parameters(nb, {name: given}) == {name: expected}, (name, given)
    bad = {"sizes": ["1,2", "[a]", "{a: 1}", "[1"], "cfg": ["[1]"], "maybe": ["x"], "flag": [2, "2"], "lr": ["x", False]}
    for name, values in bad.items():
        for given in values:
            with pytest.raises(UserError, match=rf"^00_t: parameter '{name}' expects "):
                rp.check_parameters(nb, {name: given})


def test_two_parameters_cells_rejected(tmp_path):
    nb = make_nb(tmp_path, "00_two", "a: int = 1  # a", [])
    node = nbformat.read(nb, as_version=4)
    extra = nbformat.v4.new_code_cell("b: int = 2  # b")
    extra.metadata["tags"] = ["parameters"]
    node.cells.append(extra)
    nbformat.write(node, nb)
    with pytest.raises(UserError, match=r"^00_two: 2 cells are tagged 'parameters' \(cells 1, 2\)"):
        rp.inspect_parameters(nb)


def test_reproduce_rejects_bad_input_before_running(toys, tmp_path):
    kw = dict(notebooks_dir=toys, out=tmp_path / "o", figures_dir=tmp_path / "f", progress=False)
    with pytest.raises(UserError) as err:
        rp.reproduce(params={"nn": "1"}, **kw)
    assert str(err.value) == ("unknown parameter 'nn': none of the selected notebooks declares it; "
                              "accepted: figures_dir, flag, n, out_dir, preset, progress, scale")
    with pytest.raises(UserError, match=r"^01_beta: unknown parameter 'n'; accepted: flag, scale$"):
        rp.reproduce(only=["beta"], params={"n": "1"}, **kw)
    with pytest.raises(UserError, match=r"^01_beta: parameter 'scale' expects float, got 'abc'$"):
        rp.reproduce(params={"scale": "abc"}, **kw)
    with pytest.raises(UserError, match=r"^preset: unknown preset 'huge'; accepted: tiny, smoke, paper$"):
        rp.reproduce(preset="huge", **kw)
    with pytest.raises(UserError, match=r"^notebooks_dir: no such directory: "):
        rp.reproduce(notebooks_dir=tmp_path / "none", out=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()  # nothing ran, nothing written


# ------------------------------------------------------------------------------------------
# metrics contract
def test_record_metrics_round_trip(tmp_path):
    np = pytest.importorskip("numpy")
    path = rp.record_metrics(tmp_path / "runs", "02_alpha",
                             {"miou": np.float32(0.5), "n": np.int64(3), "hist": np.arange(3),
                              "bad": float("nan"), "where": tmp_path, "nested": {"a": [1, 2.5]}})
    assert path == tmp_path / "runs" / "02_alpha.metrics.json"
    rec = json.loads(path.read_text())
    assert rec["metrics"] == {"miou": 0.5, "n": 3, "hist": [0, 1, 2], "bad": "nan",
                              "where": str(tmp_path), "nested": {"a": [1, 2.5]}}
    rp.record_metrics(tmp_path / "runs", "02_alpha", {"top1": 71.5}, key=["top1", "miou"])
    rec = rp.read_metrics(tmp_path / "runs", "02_alpha")
    assert rec["metrics"]["n"] == 3 and rec["metrics"]["top1"] == 71.5 and rec["key"] == ["top1", "miou"]
    rp.record_metrics(tmp_path / "runs", "02_alpha", {"only": 1}, merge=False)
    assert rp.read_metrics(tmp_path / "runs", "02_alpha")["metrics"] == {"only": 1}
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["02_alpha.metrics.json"]  # no temp files
    assert rp.read_metrics(tmp_path / "runs", "99_missing") == {}


def test_record_metrics_rejects_bad_input(tmp_path):
    with pytest.raises(UserError, match=r"^name: '\.\./x' is not a valid notebook name"):
        rp.record_metrics(tmp_path, "../x", {"a": 1})
    with pytest.raises(UserError, match=r"^metrics\.obj: value of type object is not JSON-serialisable$"):
        rp.record_metrics(tmp_path, "00_a", {"obj": object()})
    with pytest.raises(UserError, match=r"^record_metrics: key 'zz' is not among the metrics \(a\)$"):
        rp.record_metrics(tmp_path, "00_a", {"a": 1}, key="zz")
    (tmp_path / "00_b.metrics.json").write_text("{broken")
    with pytest.raises(UserError, match=r"00_b\.metrics\.json: unreadable metrics file"):
        rp.read_metrics(tmp_path, "00_b")


# ------------------------------------------------------------------------------------------
# a real batch (module fixture)
def test_batch_runs_in_dependency_order_and_isolates_failure(batch):
    results, order, out, _ = batch
    assert order == ["01_beta", "02_alpha", "00_gamma", "03_delta"]
    assert {n: r.status for n, r in results.items()} == {
        "01_beta": "failed", "02_alpha": "ok", "00_gamma": "ok", "03_delta": "skipped"}
    # gamma read alpha's metrics, so alpha ran first in the same out_dir
    assert results["00_gamma"].metrics == {"from_alpha": 11}
    beta = results["01_beta"]
    assert beta.error["cell_index"] == 3                # index in the source notebook
    assert beta.error["executed_cell_index"] == 4       # papermill's index (after the injected cell)
    assert (beta.error["ename"], beta.error["evalue"]) == ("ZeroDivisionError", "division by zero")
    assert beta.error["cell_source_head"] == "y = 1 / 0"
    assert beta.error_text() == "cell 3 (In [4]): ZeroDivisionError: division by zero"
    assert results["03_delta"].error["ename"] == "DependencyFailed" and results["03_delta"].output is None


def test_batch_injects_and_converts_parameters(batch):
    results, _, out, figs = batch
    alpha = results["02_alpha"]
    assert alpha.parameters == {"preset": "tiny", "n": 5, "out_dir": str(out), "figures_dir": str(figs),
                                "progress": False}
    m = alpha.metrics
    assert m["total"] == 10 and m["preset"] == "tiny" and m["progress"] is False
    assert m["figures_dir"] == str(figs)
    assert Path(m["python"]).resolve() == Path(sys.executable).resolve()   # kernel = runner's interpreter
    assert Path(m["cwd"]).name == Path(alpha.input).parent.name            # runs in the notebook's folder
    assert alpha.key_metrics == {"total": 10}
    assert results["01_beta"].parameters == {"scale": 2.0}
    executed = nbformat.read(alpha.output, as_version=4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "n = 5" in injected[0].source


def test_batch_writes_notebooks_run_json_and_summary(batch):
    results, _, out, _ = batch
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([
        "00_gamma.ipynb", "01_beta.ipynb", "02_alpha.ipynb",
        "00_gamma.run.json", "01_beta.run.json", "02_alpha.run.json", "03_delta.run.json",
        "00_gamma.metrics.json", "02_alpha.metrics.json", "summary.md", "summary.json"])
    run = json.loads((out / "02_alpha.run.json").read_text())
    for key in ("parameters", "versions", "git", "start", "end", "seconds", "status", "metrics"):
        assert key in run
    assert set(run["versions"]) >= {"python", "torch", "hrnas", "papermill"}
    assert run["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert run["status"] == "ok" and run["seconds"] > 0 and run["metrics"]["total"] == 10
    assert "commit" in run["git"]
    failed = json.loads((out / "01_beta.run.json").read_text())
    assert failed["status"] == "failed" and failed["error"]["cell_index"] == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["ok"] is False
    assert summary["counts"] == {"ok": 2, "failed": 1, "skipped": 1}
    assert [r["name"] for r in summary["results"]] == ["01_beta", "02_alpha", "00_gamma", "03_delta"]
    md = (out / "summary.md").read_text()
    rows = {c[0]: c for c in ([x.strip() for x in ln.strip("|").split("|")] for ln in md.splitlines()
                              if ln.startswith("| 0"))}
    assert rows["01_beta"][1] == "failed" and rows["01_beta"][4] == "cell 3 (In [4]): ZeroDivisionError: division by zero"
    assert rows["02_alpha"][1:2] + rows["02_alpha"][3:] == ["ok", "total=10", ""]
    assert rows["00_gamma"][3] == "from_alpha=11" and rows["03_delta"][1] == "skipped"
    # the executed failing notebook carries papermill's error banner
    executed = nbformat.read(out / "01_beta.ipynb", as_version=4)
    assert "An Exception was encountered" in executed.cells[0].source


def test_summary_frame_columns(batch):
    results, order, _, _ = batch
    df = rp.summary_frame([results[n] for n in order])
    assert list(df.columns) == ["notebook", "status", "seconds", "key metrics", "error"]
    assert df.loc[df.notebook == "02_alpha", "key metrics"].item() == "total=10"


def test_failing_cell_located_without_papermill_error():
    # cell timeout / dead kernel: papermill raises no PapermillExecutionError; the last started cell failed
    def cell(cid, tags=(), started=True, exception=False, kind="code"):
        meta = {"tags": list(tags), "papermill": {"exception": exception}}
        if started:
            meta["papermill"]["start_time"] = "t"
        return {"id": cid, "cell_type": kind, "metadata": meta}

    src = [cell("p", ["parameters"]), cell("a"), cell("b"), cell("c")]
    exe = [cell("p", ["parameters"]), cell("inj", ["injected-parameters"]), cell("a"), cell("b"),
           cell("c", started=False)]
    assert _failed_cell_from_output(exe) == 3
    assert _source_cell_index(src, exe, 3) == 2                  # matched by cell id
    exe[2]["metadata"]["papermill"]["exception"] = True
    assert _failed_cell_from_output(exe) == 2
    assert _failed_cell_from_output([cell("x", started=False)]) is None
    no_ids = [{k: v for k, v in c.items() if k != "id"} for c in exe]
    assert _source_cell_index([{k: v for k, v in c.items() if k != "id"} for c in src], no_ids, 3) == 2


def test_unknown_kernel_is_reported_not_raised(toys, tmp_path):
    res = rp.reproduce(only="alpha", notebooks_dir=toys, out=tmp_path / "o", figures_dir=tmp_path / "f",
                       progress=False, kernel_name="no_such_kernel_xyz")
    assert res[0].status == "failed" and res[0].error["ename"] == "NoSuchKernel"
    assert res[0].error["cell_index"] is None


# ------------------------------------------------------------------------------------------
# CLI
def test_main_only_filter_and_exit_status_1(toys, tmp_path, capsys):
    out = tmp_path / "runs"
    rc = reproduce_main(["--notebooks-dir", str(toys), "--out", str(out), "--figures-dir", str(tmp_path / "f"),
                  "--only", "2", "01_beta.ipynb", "-p", "n", "4"])
    assert rc == 1
    assert sorted(p.name for p in out.glob("*.run.json")) == ["01_beta.run.json", "02_alpha.run.json"]
    captured = capsys.readouterr()
    assert "| 02_alpha | ok " in captured.out and "| 01_beta  | failed |" in captured.out
    assert "[1/2] 01_beta: failed" in captured.err
    assert json.loads((out / "02_alpha.run.json").read_text())["parameters"]["n"] == 4


def test_main_exit_status_0(toys, tmp_path, capsys):
    rc = reproduce_main(["--notebooks-dir", str(toys), "--out", str(tmp_path / "runs"),
                  "--figures-dir", str(tmp_path / "f"), "--only", "alpha", "--preset", "smoke", "--quiet"])
    assert rc == 0
    assert capsys.readouterr().out == ""
    run = json.loads((tmp_path / "runs" / "02_alpha.run.json").read_text())
    assert run["parameters"]["preset"] == "smoke" and run["metrics"]["preset"] == "smoke"


@pytest.mark.parametrize("argv, message", [
    (["--only", "nope"], "--only: unknown notebook 'nope'; available: 00_gamma, 01_beta, 02_alpha, 03_delta"),
    (["-p", "nn", "1"], "unknown parameter 'nn': none of the selected notebooks declares it; "
                        "accepted: figures_dir, flag, n, out_dir, preset, progress, scale"),
    (["--only", "alpha", "-p", "n", "x"], "02_alpha: parameter 'n' expects int, got 'x'"),
    (["-p", "n", "1", "-p", "n", "2"], "-p n: given twice ('1' and '2')"),
])
def test_main_bad_input_exit_status_2(toys, tmp_path, capsys, argv, message):
    rc = reproduce_main(["--notebooks-dir", str(toys), "--out", str(tmp_path / "o"), *argv])
    assert rc == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"
    assert not (tmp_path / "o").exists()


def test_main_argparse_errors_and_list(toys, capsys):
    assert reproduce_main(["--preset", "huge"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert reproduce_main(["--notebooks-dir", str(toys), "--list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "01_beta"
    assert "00_gamma  (depends: 02_alpha)" in out and "    scale: float = 1.0  # a factor" in out


def test_add_arguments_plugs_into_a_subcommand(toys, tmp_path):
    import argparse

    parser = argparse.ArgumentParser(prog="hrnas")
    sub = parser.add_subparsers(dest="cmd")
    rp.add_arguments(sub.add_parser("reproduce"))
    args = parser.parse_args(["reproduce", "--notebooks-dir", str(toys), "--list", "--only", "beta"])
    assert args.cmd == "reproduce" and args.only == ["beta"] and args.preset == "tiny"
    assert rp.run_from_args(args) == 0
    args = parser.parse_args(["reproduce", "--notebooks-dir", str(toys), "--only", "zz"])
    with pytest.raises(UserError):
        rp.run_from_args(args)


def test_parallel_jobs_overlap_independent_notebooks_and_respect_dependencies(tmp_path, monkeypatch):
    """jobs=2: two independent notebooks run at the same time (each kernel with cores // 2 threads), a
    dependent one only after its dependency; the results keep the plan order."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    params = 'out_dir: str = "."  # run folder\n'
    cells = lambda name: [  # noqa: E731
        "import os, time\nfrom hrnas.reproduce import record_metrics\nstart = time.time()\ntime.sleep(3)",
        f"record_metrics(out_dir, '{name}', {{'start': start, 'end': time.time(), "
        f"'threads': os.environ.get('OMP_NUM_THREADS')}})"]
    folder = tmp_path / "nbs"
    folder.mkdir()
    make_nb(folder, "00_first", params, cells("00_first"))
    make_nb(folder, "01_second", params, cells("01_second"))
    make_nb(folder, "02_after_first", params, cells("02_after_first"), depends=["00_first"])
    results = rp.reproduce(notebooks_dir=folder, out=tmp_path / "runs", figures_dir=tmp_path / "f",
                           progress=False, jobs=2)
    assert [r.name for r in results] == ["00_first", "01_second", "02_after_first"]
    assert all(r.ok for r in results), [r.error for r in results]
    m = {r.name: r.metrics for r in results}
    assert m["00_first"]["start"] < m["01_second"]["end"] and m["01_second"]["start"] < m["00_first"]["end"]
    assert m["02_after_first"]["start"] > m["00_first"]["end"]
    assert {v["threads"] for v in m.values()} == {"2"}
    assert json.loads((tmp_path / "runs" / "00_first.run.json").read_text())["kernel_threads"] == 2
    assert "OMP_NUM_THREADS" not in os.environ  # restored after the batch
    with pytest.raises(UserError, match=r"^jobs: must be an integer >= 1, got 0$"):
        rp.reproduce(notebooks_dir=folder, out=tmp_path / "o", progress=False, jobs=0)


def test_kernel_starts_without_the_plain_tcp_warning(toys, tmp_path, capfd):
    """ipykernel warns on stderr (inherited by the batch's terminal) when its TCP transport has no
    CurveZMQ keys; the runner's kernels get keys from jupyter_client, so the batch output is ours."""
    import papermill as pm

    warning = "Kernel is running over TCP without encryption"
    # control: plain papermill (no keys) prints the warning, and capfd sees the kernel's stderr
    make_nb(tmp_path, "00_plain", None, ["x = 1"])
    pm.execute_notebook(str(tmp_path / "00_plain.ipynb"), str(tmp_path / "plain_out.ipynb"), progress_bar=False)
    assert warning in capfd.readouterr().err
    res = rp.reproduce(only="alpha", notebooks_dir=toys, out=tmp_path / "o", figures_dir=tmp_path / "f",
                       progress=True)
    captured = capfd.readouterr()
    assert res[0].ok and "[1/1] 02_alpha: ok" in captured.err
    assert warning not in captured.err and warning not in captured.out
