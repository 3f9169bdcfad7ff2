"""Tables: save a DataFrame as CSV + Markdown + LaTeX, and the paper's numbers shipped as data.

- `save_table(df, stem, figures_dir)` writes `<stem>.csv` (full precision), `<stem>.md` (a pipe
  table) and `<stem>.tex` (booktabs; `DataFrame.to_latex` when jinja2 is importable, else our own
  writer with the same layout). Every file is written atomically (temp file + `os.replace`).
- `paper_table("table1" | "table2")`: Tables 1-2 of the HR-NAS supplement (Cityscapes val,
  transformer ablations), from `hrnas/configs/paper_tables.csv`.
- `reference_results(task)`: the paper's and the peers' published numbers that the notebooks print
  next to ours, from `hrnas/configs/reference_results.csv` (each row names a source a reader can open
  and what kind it is: `confidence` = paper | repo | issue | third-party, see `REFERENCE_CONFIDENCE`).
  These numbers are the authors'/peers', never ours.
"""
from __future__ import annotations

import io
import math
import numbers
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from hrnas.errors import UserError
from hrnas.io import atomic_write_text

PAPER_TABLES_FILE = "paper_tables.csv"
REFERENCE_RESULTS_FILE = "reference_results.csv"

# Column headers as printed in the supplement (both tables call the first column "Input size",
# although it holds the projection size / the attention variant).
PAPER_TABLE_HEADERS = {
    "variant": "Input size",
    "params_M": "Params",
    "flops_G": "FLOPs",
    "miou": "mIoU(%)",
    "macc": "mACC(%)",
    "aacc": "aACC(%)",
}
PAPER_TABLE_CAPTIONS = {
    1: "Comparisons of different projection size s of Transformer on the CityScapes validation set. "
    "The query number n is set to 8.",
    2: "Ablation study of our lightweight Transformer with n = 8 and s = 8 on the CityScapes "
    "validation set.",
}
REFERENCE_COLUMNS = (
    "task", "method", "metric", "value", "input_size", "params_M", "macs_G",
    "split", "confidence", "source", "note",
)
# kinds of source of a published number: the HR-NAS paper/supplement (a table), a repository file, a GitHub
# thread quoting it, a later paper's table quoting it
REFERENCE_CONFIDENCE = ("paper", "repo", "issue", "third-party")
_STEM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


# --------------------------------------------------------------------------------------------
# cell formatting shared by the Markdown and LaTeX writers
def _is_missing(value) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and other containers
        return False


def format_cell(value, float_format: str | None = None) -> str:
    """One cell as text: '' for missing, shortest round-trip repr for floats unless
    `float_format` (a format spec such as '.2f') is given."""
    if _is_missing(value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        x = float(value)
        if not math.isfinite(x):
            return str(x)
        if float_format:
            return format(x, float_format)
        return repr(x)
    return str(value)


def _text_frame(df: pd.DataFrame, index: bool, float_format: str | None):
    """Return (header, rows, numeric flags) with every cell already formatted as text."""
    frame = df.reset_index() if index else df
    header = [str(c) for c in frame.columns]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
               for c in frame.columns]
    rows = [[format_cell(v, float_format) for v in rec] for rec in frame.itertuples(index=False, name=None)]
    return header, rows, numeric


def _default_index(df: pd.DataFrame) -> bool:
    """Write the index only when it carries information (named, or not 0..n-1)."""
    idx = df.index
    if any(n is not None for n in idx.names):
        return True
    return not (isinstance(idx, pd.RangeIndex) and idx.start == 0 and idx.step == 1)


def _check_frame(df) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise UserError(f"df: expected a pandas DataFrame, got {type(df).__name__}")
    if isinstance(df.columns, pd.MultiIndex):
        raise UserError("df: MultiIndex columns are not supported; flatten them first")
    return df


def markdown_table(df: pd.DataFrame, *, index: bool | None = None, float_format: str | None = None) -> str:
    """A GitHub/pandoc pipe table (no tabulate needed); numeric columns right-aligned."""
    df = _check_frame(df)
    if index is None:
        index = _default_index(df)
    header, rows, numeric = _text_frame(df, index, float_format)

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")

    header = [esc(h) for h in header]
    rows = [[esc(c) for c in r] for r in rows]
    widths = [max([3, len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells):
        out = []
        for i, c in enumerate(cells):
            out.append(c.rjust(widths[i]) if numeric[i] else c.ljust(widths[i]))
        return "| " + " | ".join(out) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                          for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows]) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _have_jinja2() -> bool:
    try:
        import jinja2  # noqa: F401
    except ImportError:
        return False
    return True


def latex_table(df: pd.DataFrame, *, caption: str | None = None, label: str | None = None,
                index: bool | None = None, float_format: str | None = None,
                use_pandas: bool | None = None) -> str:
    """A booktabs LaTeX table. `use_pandas=None` picks `DataFrame.to_latex` when jinja2 is
    importable and our own writer otherwise; both give the same rows."""
    df = _check_frame(df)
    if index is None:
        index = _default_index(df)
    header, rows, numeric = _text_frame(df, index, float_format)
    colfmt = "".join("r" if n else "l" for n in numeric)
    if use_pandas is None:
        use_pandas = _have_jinja2()
    if use_pandas:
        text_df = pd.DataFrame(rows, columns=header)
        return text_df.to_latex(index=False, escape=True, column_format=colfmt,
                                caption=latex_escape(caption) if caption else None, label=label)
    lines = []
    if caption or label:
        lines.append(r"\begin{table}")
        if caption:
            lines.append(r"\caption{" + latex_escape(caption) + "}")
        if label:
            lines.append(r"\label{" + label + "}")
    lines += [r"\begin{tabular}{" + colfmt + "}", r"\toprule",
              " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(latex_escape(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption or label:
        lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, stem: str, figures_dir, caption: str | None = None, *,
               index: bool | None = None, float_format: str | None = None) -> dict[str, Path]:
    """Write `<figures_dir>/<stem>.csv|.md|.tex` atomically; return {"csv": Path, "md": ..., "tex": ...}.

    The CSV keeps full precision; Markdown and LaTeX show floats with `float_format` (a format
    spec such as ".2f") or, by default, their shortest exact repr. `caption` goes into the .tex
    (\\caption) and under the Markdown table (pandoc's `Table:` line). The index is written when
    it is named or not a plain 0..n-1 range, unless `index` says otherwise.
    """
    df = _check_frame(df)
    if not isinstance(stem, str) or not _STEM_RE.match(stem):
        raise UserError(f"stem: {stem!r} is not a valid file stem (letters, digits, _ . + -; no folders)")
    if float_format is not None:
        try:
            format(1.5, float_format)
        except (ValueError, TypeError):
            raise UserError(f"float_format: {float_format!r} is not a float format spec (e.g. '.2f')") from None
    if index is None:
        index = _default_index(df)
    folder = Path(figures_dir)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"figures_dir: {folder} exists and is not a directory")
    folder.mkdir(parents=True, exist_ok=True)

    md = markdown_table(df, index=index, float_format=float_format)
    if caption:
        md += f"\nTable: {' '.join(str(caption).split())}\n"
    paths = {
        "csv": atomic_write_text(folder / f"{stem}.csv", df.to_csv(index=index, lineterminator="\n")),
        "md": atomic_write_text(folder / f"{stem}.md", md),
        "tex": atomic_write_text(folder / f"{stem}.tex", latex_table(
            df, caption=caption, label=f"tab:{stem}", index=index, float_format=float_format)),
    }
    return paths


# --------------------------------------------------------------------------------------------
# data shipped inside the package
def _read_packaged_csv(filename: str) -> pd.DataFrame:
    """Read a CSV from hrnas/configs, skipping its leading '#' comment lines (provenance)."""
    try:
        text = resources.files("hrnas.configs").joinpath(filename).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"hrnas/configs/{filename} is missing from the installed package "
                                "(check package-data in pyproject.toml)") from None
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    return pd.read_csv(io.StringIO(body), keep_default_na=True)


def paper_table(name) -> pd.DataFrame:
    """Table 1 or 2 of the HR-NAS supplement (Cityscapes val; n = 8 queries).

    `name`: "table1" / "table2" (also 1, 2, "1", "Table 1"). Columns: variant, params_M, flops_G,
    miou, macc, aacc (the paper's "FLOPs" are multiply-adds). `df.attrs` holds the caption, the
    paper's column headers and the source.
    """
    key = re.sub(r"[\s_-]+", "", str(name)).lower()
    key = key[len("table"):] if key.startswith("table") else key
    if key not in ("1", "2"):
        raise UserError(f"paper_table: unknown table {name!r}; available: table1, table2")
    number = int(key)
    all_rows = _read_packaged_csv(PAPER_TABLES_FILE)
    df = all_rows[all_rows["table"] == number].drop(columns="table").reset_index(drop=True)
    df.attrs.update(
        caption=f"Table {number}. " + PAPER_TABLE_CAPTIONS[number],
        paper_columns=[PAPER_TABLE_HEADERS[c] for c in df.columns],
        source=f"HR-NAS supplementary material (Ding et al., CVPR 2021), Table {number}",
    )
    return df


def reference_results(task: str | None = None, *, metric: str | None = None) -> pd.DataFrame:
    """Published numbers (HR-NAS paper/supplement and peers) to show next to ours.

    `task`: cityscapes | ade20k | coco | kitti | imagenet (None = all). `metric` filters by metric
    name (exact, case-insensitive). Every row's `source` names where a reader can check it.
    Columns: task, method, metric, value, input_size, params_M, macs_G, split, confidence, source,
    note. `macs_G` is the number as published; `note` says when its divisor or resolution differ.
    """
    df = _read_packaged_csv(REFERENCE_RESULTS_FILE)
    tasks = sorted(df["task"].unique())
    if task is not None:
        if task not in tasks:
            raise UserError(f"reference_results: unknown task {task!r}; available: {', '.join(tasks)}")
        df = df[df["task"] == task]
    if metric is not None:
        sel = df["metric"].str.lower() == str(metric).lower()
        if not sel.any():
            raise UserError(f"reference_results: no metric {metric!r} for task {task!r}; available: "
                            f"{', '.join(sorted(df['metric'].unique()))}")
        df = df[sel]
    return df.reset_index(drop=True)
