"""Batch re-runs of the notebooks with papermill: `hrnas reproduce`.

Notebook contract
-----------------
- Files are `notebooks/NN_name.ipynb` (NN = number prefix, any digits). Other files are ignored.
- Exactly one cell is tagged `parameters`; it holds only annotated assignments, one per line, each
  with a comment: ``preset: str = "tiny"  # tiny|smoke|paper: run size``. A comment that starts with
  ``a|b|c`` declares the accepted choices. The strict checks understand int, float, str, bool,
  list / list[T] / tuple[T, ...], dict, Path (as str), ``Optional[T]`` / ``T | None`` (anything
  else is passed through unchecked); the next rule narrows what a notebook may write.
- **Every parameter must be readable by papermill's own `inspect_notebook`**, which plain
  ``papermill NB OUT -p NAME VALUE`` and ``papermill --help-notebook`` use (a name it cannot read
  gets "Passed unknown parameter" although the value is injected). Its reader is a one-line regular
  expression: the annotation must be a name or a subscript of names (``int``, ``list[str]``), so
  write an optional value as ``data_root: "Optional[str]" = None`` (quoted: the cell then needs no
  ``typing`` import) — never ``str | None``, ``tuple[T, ...]`` or a dotted name; the value and its
  comment stay on one line, with no ``=`` in the comment and no ``#`` inside the value.
  `hrnas reproduce --list` marks a parameter that breaks this rule, and a batch run records a
  warning for it (tests/test_notebooks.py checks every notebook).
- A notebook may depend on others: ``metadata.hrnas.depends: ["02_cityscapes_segmentation"]``
  (names with or without the number prefix). Notebooks run in topological order, ties by number.
- The runner injects, when the notebook declares them: ``preset``, ``out_dir`` (the absolute
  ``--out`` folder, shared by all notebooks of a batch so that a notebook can read what its
  dependencies wrote; put bulky artefacts under ``<out_dir>/<name>/``), ``figures_dir`` (absolute)
  and ``progress = False`` (progress bars are noise in stored notebooks). ``-p`` values override.
- Metrics: the notebook calls ``hrnas.reproduce.record_metrics(out_dir, "NN_name", {...})``, which
  writes ``<out_dir>/NN_name.metrics.json`` atomically (several calls merge). The runner deletes a
  stale file before the run and copies the metrics into ``<out>/NN_name.run.json``.
- The kernel is ``python3`` with the working directory set to the notebook's folder. jupyter_client
  starts a kernelspec whose argv[0] is ``python`` with ``sys.executable``, so the kernel is the
  interpreter that runs `hrnas reproduce` (the venv's; its ``share/jupyter/kernels/python3`` comes
  with ipykernel, i.e. the same as ``python -m ipykernel install --sys-prefix``).

Outputs in ``<out>``: ``NN_name.ipynb`` (executed; written as ``NN_name.running.ipynb`` while it
runs, then renamed), ``NN_name.run.json``, ``summary.md`` and ``summary.json`` (rewritten after
every notebook, so an interrupted batch still leaves a summary).

Modules: `metrics` (the metrics contract), `notebooks` (discovery and order), `parameters` (the
parameters cell and its strict checks), `execute` (one papermill run), `batch` (`reproduce`, the
scheduler and the summary), `cli` (the options of `hrnas reproduce`).
"""
from __future__ import annotations

from hrnas.reproduce.batch import DEFAULT_KERNEL, INJECTED_PARAMETERS, PRESETS, reproduce, summary_frame
from hrnas.reproduce.cli import add_arguments, list_notebooks, run_from_args
from hrnas.reproduce.execute import Result
from hrnas.reproduce.metrics import metrics_path, read_metrics, record_metrics
from hrnas.reproduce.notebooks import (DEFAULT_NOTEBOOKS_DIR, NotebookInfo, discover_notebooks, match_notebook,
                                       notebook_order)
from hrnas.reproduce.parameters import check_parameters, convert_value, inspect_parameters, parse_type

__all__ = [
    "DEFAULT_KERNEL", "DEFAULT_NOTEBOOKS_DIR", "INJECTED_PARAMETERS", "PRESETS", "NotebookInfo", "Result",
    "add_arguments", "check_parameters", "convert_value", "discover_notebooks", "inspect_parameters",
    "list_notebooks", "match_notebook", "metrics_path", "notebook_order", "parse_type", "read_metrics",
    "record_metrics", "reproduce", "run_from_args", "summary_frame",
]


def __getattr__(name):  # NOTEBOOK_ORDER is computed on access, so it always reflects notebooks/
    if name == "NOTEBOOK_ORDER":
        return tuple(notebook_order(DEFAULT_NOTEBOOKS_DIR)) if DEFAULT_NOTEBOOKS_DIR.is_dir() else ()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
