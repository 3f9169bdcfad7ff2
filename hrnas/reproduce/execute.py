"""Running one notebook with papermill, and locating the cell that failed.

Kernels are started with CurveZMQ transport encryption (`KernelManager.transport_encryption =
"auto"`: jupyter_client provisions the keys when the kernelspec declares ``supported_encryption:
["curve"]``, as ipykernel's own ``python3`` does). Without keys, ipykernel warns on stderr at every
start that it runs over TCP without encryption, and that warning lands in the batch output.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path

from hrnas.errors import UserError
from hrnas.reproduce.notebooks import NotebookInfo, cell_source, cell_tags, load_nb_json

_PM_ERROR_TAG = "papermill-error-cell-tag"


@dataclasses.dataclass
class Result:
    name: str
    status: str                      # "ok" | "failed" | "skipped"
    seconds: float
    input: Path
    output: Path | None              # executed notebook (None when skipped)
    run_json: Path
    parameters: dict
    metrics: dict
    key_metrics: dict
    error: dict | None               # {cell_index, exec_count, ename, evalue, ...} when failed/skipped
    started: str | None = None
    finished: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def error_text(self) -> str:
        if not self.error:
            return ""
        e = self.error
        where = ""
        if e.get("cell_index") is not None:
            where = f"cell {e['cell_index']}"
            if e.get("exec_count") is not None:
                where += f" (In [{e['exec_count']}])"
            where += ": "
        evalue = " ".join(str(e.get("evalue", "")).split())
        if len(evalue) > 200:
            evalue = evalue[:197] + "..."
        return f"{where}{e.get('ename', 'Error')}" + (f": {evalue}" if evalue else "")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for k in ("input", "output", "run_json"):
            d[k] = str(d[k]) if d[k] is not None else None
        return d


def kernel_config():
    """traitlets config of the kernel manager papermill starts: encrypted transport (module docstring)."""
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": "auto"}})


def _source_cell_index(src_cells: list, exe_cells: list, exe_idx: int) -> int:
    """Map an index in the executed notebook (papermill's, with the injected cell, without the
    error banners) to the index of the same cell in the source notebook."""
    if not 0 <= exe_idx < len(exe_cells):
        return exe_idx
    cid = exe_cells[exe_idx].get("id")
    if cid:
        for i, c in enumerate(src_cells):
            if c.get("id") == cid:
                return i
    if any("injected-parameters" in cell_tags(c) for c in src_cells):
        return exe_idx
    inj = [i for i, c in enumerate(exe_cells) if "injected-parameters" in cell_tags(c)]
    return exe_idx - 1 if inj and exe_idx > inj[0] else exe_idx


def _failed_cell_from_output(exe_cells: list) -> int | None:
    """The failing cell of an executed notebook when papermill raised something other than
    PapermillExecutionError: the cell flagged with an exception, else the last cell that started
    (a cell timeout or a dead kernel stops the run there); None when no cell started."""
    started = None
    for i, c in enumerate(exe_cells):
        pm_meta = c.get("metadata", {}).get("papermill", {})
        if pm_meta.get("exception"):
            return i
        if c.get("cell_type") == "code" and pm_meta.get("start_time"):
            started = i
    return started


def execute(info: NotebookInfo, params: dict, out: Path, kernel_name: str, timeout, progress: bool):
    """Run one notebook into ``<out>/<name>.ipynb``; return (status, error, output path)."""
    import papermill as pm

    final = out / f"{info.name}.ipynb"
    running = out / f"{info.name}.running.ipynb"
    error = None
    exe_idx = None
    try:
        pm.execute_notebook(str(info.path), str(running), parameters=params, kernel_name=kernel_name,
                            progress_bar=progress, cwd=str(info.path.parent),
                            execution_timeout=timeout, log_output=False, config=kernel_config())
    except pm.PapermillExecutionError as exc:
        exe_idx = exc.cell_index
        error = {"exec_count": exc.exec_count, "ename": exc.ename, "evalue": exc.evalue}
    except Exception as exc:  # kernel died, cell timeout, no such kernel, ...
        error = {"exec_count": None, "ename": type(exc).__name__, "evalue": str(exc).strip()}
    finally:
        if running.exists():
            os.replace(running, final)
    if error is None:
        return "ok", None, final
    src_cells = load_nb_json(info.path)["cells"]
    exe_cells = []
    if final.exists():
        try:
            exe_cells = [c for c in load_nb_json(final)["cells"] if _PM_ERROR_TAG not in cell_tags(c)]
        except UserError:
            exe_cells = []
        if exe_idx is None:
            exe_idx = _failed_cell_from_output(exe_cells)
            if exe_idx is not None:
                error["exec_count"] = exe_cells[exe_idx].get("execution_count")
    error["executed_cell_index"] = exe_idx
    error["cell_index"] = _source_cell_index(src_cells, exe_cells, exe_idx) if exe_idx is not None else None
    if error["cell_index"] is not None and 0 <= error["cell_index"] < len(src_cells):
        lines = cell_source(src_cells[error["cell_index"]]).strip().splitlines()
        error["cell_source_head"] = lines[0][:120] if lines else ""
    return "failed", error, final if final.exists() else None


@contextlib.contextmanager
def kernel_threads(threads: int | None):
    """Set OMP_NUM_THREADS / MKL_NUM_THREADS for the kernels started inside (None, or a value the user
    already set: leave them alone)."""
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    if threads is None or any(k in os.environ for k in keys):
        yield
        return
    for k in keys:
        os.environ[k] = str(threads)
    try:
        yield
    finally:
        for k in keys:
            os.environ.pop(k, None)
