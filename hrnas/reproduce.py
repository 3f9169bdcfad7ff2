"""Batch re-runs of the notebooks with papermill: `hrnas reproduce`.

Notebook contract
-----------------
- Files are `notebooks/NN_name.ipynb` (NN = number prefix, any digits). Other files are ignored.
- Exactly one cell is tagged `parameters`; it holds annotated assignments with a comment each,
  e.g. ``preset: str = "tiny"  # tiny|smoke|paper``. Supported annotations: int, float, str, bool,
  list / list[T] / tuple[T, ...], dict, Path (as str), ``Optional[T]`` / ``T | None``; anything else
  is passed through unchecked. A comment that starts with ``a|b|c`` declares the accepted choices.
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
"""
from __future__ import annotations

import argparse
import ast
import concurrent.futures
import contextlib
import dataclasses
import datetime as _dt
import heapq
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
import tokenize
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hrnas.errors import UserError
from hrnas.io import atomic_write_text
from hrnas.viz.tables import markdown_table

PRESETS = ("tiny", "smoke", "paper")
INJECTED_PARAMETERS = ("preset", "out_dir", "figures_dir", "progress")
DEFAULT_KERNEL = "python3"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
_NB_RE = re.compile(r"^(?P<num>\d+)_(?P<rest>[^/\\]+)$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_CHOICES_RE = re.compile(r"^\s*(?P<c>[\w.+-]+(?:\s*\|\s*[\w.+-]+)+)(?=$|[\s:;,)])")
_PM_ERROR_TAG = "papermill-error-cell-tag"
_MAX_KEY_METRICS = 4


def __getattr__(name):  # NOTEBOOK_ORDER is computed on access, so it always reflects notebooks/
    if name == "NOTEBOOK_ORDER":
        if not DEFAULT_NOTEBOOKS_DIR.is_dir():
            return ()
        return tuple(notebook_order(DEFAULT_NOTEBOOKS_DIR))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ============================================================================================
# small helpers
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value, where: str):
    """Plain JSON types only: numpy/torch scalars and arrays via .item()/.tolist(), Path -> str,
    non-finite floats -> "nan"/"inf"/"-inf" (kept valid JSON)."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise UserError(f"{where}: key {_short(k)} is not a string")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    for attr in ("item", "tolist"):  # numpy scalars/arrays, torch tensors
        fn = getattr(value, attr, None)
        if callable(fn):
            try:
                return _jsonable(fn(), where)
            except (TypeError, ValueError, RuntimeError):
                continue
    raise UserError(f"{where}: value of type {type(value).__name__} is not JSON-serialisable")


def _write_json(path: Path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def _check_name(name, what: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise UserError(f"{what}: {_short(name)} is not a valid notebook name (letters, digits, _ . + -)")
    return name


# ============================================================================================
# metrics contract
def metrics_path(out_dir, name: str) -> Path:
    return Path(out_dir) / f"{_check_name(name, 'name')}.metrics.json"


def record_metrics(out_dir, name: str, metrics: Mapping, *, key=None, merge: bool = True) -> Path:
    """Record a notebook's metrics in ``<out_dir>/<name>.metrics.json`` (atomic write).

    `metrics`: a mapping of JSON-able values (numbers, strings, lists, nested dicts; numpy/torch
    scalars are converted). Repeated calls merge into the file (``merge=False`` replaces it).
    `key`: names of the metrics to show in the batch summary table (default: the first few
    numeric ones). Returns the path written.
    """
    path = metrics_path(out_dir, name)
    if not isinstance(metrics, Mapping):
        raise UserError(f"record_metrics: metrics must be a mapping, got {type(metrics).__name__}")
    new = _jsonable(metrics, "metrics")
    record = {"notebook": name, "metrics": {}, "key": []}
    if merge and path.exists():
        old = read_metrics(out_dir, name)
        record["metrics"].update(old.get("metrics", {}))
        record["key"] = list(old.get("key", []))
    record["metrics"].update(new)
    if key is not None:
        keys = [key] if isinstance(key, str) else list(key)
        missing = [k for k in keys if k not in record["metrics"]]
        if missing:
            raise UserError(f"record_metrics: key {missing[0]!r} is not among the metrics "
                            f"({', '.join(record['metrics'])})")
        record["key"] = keys
    record["updated"] = _now()
    return _write_json(path, record)


def read_metrics(out_dir, name: str) -> dict:
    """The record written by `record_metrics` ({"notebook", "metrics", "key", "updated"}), or {}."""
    path = metrics_path(out_dir, name)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable metrics file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise UserError(f"{path}: not a metrics record (expected an object with a 'metrics' object)")
    return data


def _key_metrics(metrics: dict, key: list) -> dict:
    if key:
        return {k: metrics[k] for k in key if k in metrics}
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = v
            if len(out) == _MAX_KEY_METRICS:
                break
    return out


def _fmt_metric(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# ============================================================================================
# notebook discovery and ordering
@dataclasses.dataclass(frozen=True)
class NotebookInfo:
    name: str            # file stem, e.g. "02_cityscapes_segmentation"
    number: int
    path: Path
    depends: tuple[str, ...] = ()


def _load_nb_json(path: Path) -> dict:
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such notebook") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable notebook ({type(exc).__name__})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise UserError(f"{path}: not a notebook (no 'cells' list)")
    return nb


def _cell_source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _cell_tags(cell) -> list:
    tags = cell.get("metadata", {}).get("tags", [])
    return tags if isinstance(tags, list) else []


def match_notebook(query: str, names, what: str = "--only") -> str:
    """Resolve `query` ("02_seg", "seg", "02_seg.ipynb", "notebooks/02_seg.ipynb", "2") to a name."""
    names = list(names)
    q = Path(str(query).strip()).name
    if q.endswith(".ipynb"):
        q = q[: -len(".ipynb")]
    if q in names:
        return q
    cands = [n for n in names if n.split("_", 1)[1] == q]
    if not cands and q.isdigit():
        cands = [n for n in names if int(n.split("_", 1)[0]) == int(q)]
    if len(cands) == 1:
        return cands[0]
    if len(cands) > 1:
        raise UserError(f"{what}: notebook name {query!r} is ambiguous: {', '.join(cands)}")
    raise UserError(f"{what}: unknown notebook {query!r}; available: {', '.join(names) or '(none)'}")


def _resolve_notebooks_dir(notebooks_dir) -> Path:
    p = Path(notebooks_dir)
    if p.is_dir():
        return p.resolve()
    if str(notebooks_dir) == "notebooks" and DEFAULT_NOTEBOOKS_DIR.is_dir():
        return DEFAULT_NOTEBOOKS_DIR  # run from outside the repository: use the package's notebooks/
    raise UserError(f"notebooks_dir: no such directory: {p}")


def discover_notebooks(notebooks_dir="notebooks") -> list[NotebookInfo]:
    """All `NN_name.ipynb` in `notebooks_dir`, sorted by (number, name), dependencies resolved."""
    folder = _resolve_notebooks_dir(notebooks_dir)
    found = []
    for path in folder.glob("*.ipynb"):
        m = _NB_RE.match(path.stem)
        if m and path.is_file():
            found.append((int(m["num"]), path.stem, path))
    found.sort()
    names = [stem for _, stem, _ in found]
    infos = []
    for number, stem, path in found:
        meta = _load_nb_json(path).get("metadata", {}).get("hrnas", {}) or {}
        deps = meta.get("depends", []) if isinstance(meta, dict) else []
        if isinstance(deps, str):
            deps = [deps]
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            raise UserError(f"{stem}: metadata.hrnas.depends must be a list of notebook names")
        resolved = []
        for d in deps:
            r = match_notebook(d, names, what=f"{stem}: metadata.hrnas.depends")
            if r == stem:
                raise UserError(f"{stem}: metadata.hrnas.depends lists the notebook itself")
            if r not in resolved:
                resolved.append(r)
        infos.append(NotebookInfo(stem, number, path, tuple(resolved)))
    return infos


def _toposort(infos: list[NotebookInfo]) -> list[NotebookInfo]:
    by_name = {i.name: i for i in infos}
    indeg = {i.name: len(i.depends) for i in infos}
    children: dict[str, list[str]] = {i.name: [] for i in infos}
    for i in infos:
        for d in i.depends:
            children[d].append(i.name)
    heap = [(by_name[n].number, n) for n, k in indeg.items() if k == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        _, n = heapq.heappop(heap)
        order.append(by_name[n])
        for c in children[n]:
            indeg[c] -= 1
            if indeg[c] == 0:
                heapq.heappush(heap, (by_name[c].number, c))
    if len(order) < len(infos):
        stuck = sorted(n for n, k in indeg.items() if k > 0)
        raise UserError(f"metadata.hrnas.depends: dependency cycle among notebooks {', '.join(stuck)}")
    return order


def notebook_order(notebooks_dir="notebooks") -> list[str]:
    """Notebook names in run order: topological by metadata.hrnas.depends, ties by number."""
    return [i.name for i in _toposort(discover_notebooks(notebooks_dir))]


# ============================================================================================
# parameters: inspection, types, strict checking
def _parameters_cell(nb: dict, label: str) -> str | None:
    idx = [i for i, c in enumerate(nb["cells"]) if "parameters" in _cell_tags(c)]
    if not idx:
        return None
    if len(idx) > 1:
        raise UserError(f"{label}: {len(idx)} cells are tagged 'parameters' (cells "
                        f"{', '.join(map(str, idx))}); papermill uses only the first, keep exactly one")
    return _cell_source(nb["cells"][idx[0]])


def _comments_by_line(src: str) -> dict[int, str]:
    out = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.COMMENT:
                out[tok.start[0]] = tok.string.lstrip("#").strip()
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def _parse_parameters_ast(src: str) -> dict | None:
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return None
    comments = _comments_by_line(src)
    params = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name = node.target.id
            ann = node.annotation
            ann_text = ann.value if isinstance(ann, ast.Constant) and isinstance(ann.value, str) else ast.unparse(ann)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, ann_text = node.targets[0].id, None
        else:
            continue
        try:
            default = ast.literal_eval(node.value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            default = ast.unparse(node.value)  # not a literal: keep the expression text
            literal = False
        else:
            literal = True
        if ann_text is None:
            ann_text = type(default).__name__ if literal and default is not None else "any"
        help_text = comments.get(node.end_lineno) or comments.get(node.lineno) or ""
        params[name] = {"type": ann_text, "default": default, "help": help_text}
    return params


def _parse_parameters_papermill(path: Path) -> dict:
    import papermill as pm

    out = {}
    for name, p in pm.inspect_notebook(str(path)).items():
        try:
            default = ast.literal_eval(p["default"])
        except (ValueError, TypeError, SyntaxError):
            default = p["default"]
        t = p.get("inferred_type_name") or "None"
        out[name] = {"type": t if t != "None" else "any", "default": default, "help": p.get("help", "")}
    return out


def inspect_parameters(nb_path) -> dict[str, dict[str, Any]]:
    """{name: {"type": str, "default": value, "help": str, "choices": tuple | None}} of the cell
    tagged `parameters` (same cell as papermill's `inspect_notebook`; parsed with `ast` +
    `tokenize` so annotations like ``str | None`` and '#' inside strings are handled, falling
    back to papermill's parser when the cell is not plain Python). {} when there is no such cell.
    """
    path = Path(nb_path)
    nb = _load_nb_json(path)
    src = _parameters_cell(nb, path.stem)
    if src is None:
        return {}
    params = _parse_parameters_ast(src)
    if params is None:
        params = _parse_parameters_papermill(path)
    for p in params.values():
        m = _CHOICES_RE.match(p["help"])
        p["choices"] = tuple(c.strip() for c in m["c"].split("|")) if m else None
    return params


# --- type specs ------------------------------------------------------------------------------
_BASE_TYPES = {
    "int": "int", "float": "float", "str": "str", "bool": "bool", "list": "list", "List": "list",
    "Sequence": "list", "tuple": "tuple", "Tuple": "tuple", "dict": "dict", "Dict": "dict",
    "Mapping": "dict", "Path": "str", "PathLike": "str", "PurePath": "str",
}


def _type_spec(node) -> tuple:
    if isinstance(node, ast.Constant) and node.value is None:
        return ("none",)
    if isinstance(node, ast.Name) or isinstance(node, ast.Attribute):
        base = node.id if isinstance(node, ast.Name) else node.attr
        if base == "None":
            return ("none",)
        kind = _BASE_TYPES.get(base)
        return (kind, None) if kind in ("list", "tuple") else ((kind,) if kind else ("any",))
    if isinstance(node, ast.Subscript):
        base = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "Optional":
            return _union([_type_spec(args[0]), ("none",)])
        if base == "Union":
            return _union([_type_spec(a) for a in args])
        kind = _BASE_TYPES.get(base)
        if kind in ("list", "tuple"):
            elem = [a for a in args if not (isinstance(a, ast.Constant) and a.value is Ellipsis)]
            return (kind, _type_spec(elem[0]) if len(elem) == 1 else None)
        return (kind,) if kind else ("any",)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([_type_spec(node.left), _type_spec(node.right)])
    return ("any",)


def _union(members: list[tuple]) -> tuple:
    flat = []
    for m in members:
        flat.extend(m[1] if m[0] == "union" else [m])
    non_none = [m for m in flat if m[0] != "none"]
    if len(non_none) == 1 and len(flat) > 1:
        return ("optional", non_none[0])
    if len(non_none) == 1:
        return non_none[0]
    return ("any",)


def parse_type(annotation: str) -> tuple:
    """Annotation text -> a small type spec: ("int",), ("list", elem | None), ("optional", spec), ("any",)…"""
    try:
        return _type_spec(ast.parse(annotation.strip(), mode="eval").body)
    except SyntaxError:
        return ("any",)


class _ConversionError(Exception):
    pass


_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def _yaml_load(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise _ConversionError from None


def convert_value(value, spec: tuple):
    """Convert `value` (a CLI string or a Python object) to the type `spec`; raise _ConversionError."""
    kind = spec[0]
    if kind == "any":
        return value
    if kind == "none":
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
            return None
        raise _ConversionError
    if kind == "optional":
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "~")):
            return None
        return convert_value(value, spec[1])
    if kind == "int":
        if isinstance(value, bool):
            raise _ConversionError
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise _ConversionError from None
        if hasattr(value, "__index__"):
            return int(value.__index__())
        raise _ConversionError
    if kind == "float":
        if isinstance(value, bool):
            raise _ConversionError
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise _ConversionError from None
        try:
            return float(value)  # numpy scalars
        except (TypeError, ValueError):
            raise _ConversionError from None
    if kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise _ConversionError
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str):
            v = value.strip().lower()
            if v in _TRUE:
                return True
            if v in _FALSE:
                return False
        raise _ConversionError
    if kind in ("list", "tuple"):
        seq = value
        if isinstance(value, str):
            seq = _yaml_load(value)
        if not isinstance(seq, (list, tuple)):
            raise _ConversionError
        elem = spec[1]
        items = [convert_value(v, elem) if elem else v for v in seq]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        d = _yaml_load(value) if isinstance(value, str) else value
        if not isinstance(d, Mapping):
            raise _ConversionError
        return dict(d)
    return value


def _expected_text(ptype: str, spec: tuple) -> str:
    if spec[0] in ("list", "tuple"):
        return f"{ptype} (YAML/JSON list, e.g. '[1, 2]')"
    if spec[0] == "dict":
        return f"{ptype} (YAML/JSON mapping, e.g. '{{a: 1}}')"
    if spec[0] == "bool" or (spec[0] == "optional" and spec[1][0] == "bool"):
        return f"{ptype} (true/false/1/0/yes/no)"
    return ptype


def _convert_parameter(label: str, name: str, value, info: dict):
    spec = parse_type(info["type"])
    try:
        converted = convert_value(value, spec)
    except _ConversionError:
        raise UserError(f"{label}: parameter '{name}' expects {_expected_text(info['type'], spec)}, "
                        f"got {_short(value)}") from None
    choices = info.get("choices")
    if choices and isinstance(converted, str) and converted not in choices:
        raise UserError(f"{label}: parameter '{name}' = {_short(converted)} is not one of {'|'.join(choices)}")
    return converted


def check_parameters(nb_path, params: Mapping | None) -> dict:
    """Strict check of `params` against the notebook's parameters cell; returns converted values.

    Unknown name -> ``UserError("<nb>: unknown parameter 'x'; accepted: a, b, c")``; a value that
    does not convert to the annotated type (CLI strings are converted: int, float, bool as
    true/false/1/0/yes/no, list/dict as YAML/JSON) or is not among the declared choices ->
    ``UserError`` naming the parameter, the value and the expected type.
    """
    path = Path(nb_path)
    declared = inspect_parameters(path)
    return _check_against(path.stem, declared, params or {})


def _check_against(label: str, declared: dict, params: Mapping) -> dict:
    unknown = [n for n in params if n not in declared]
    if unknown:
        raise UserError(f"{label}: unknown parameter '{unknown[0]}'; accepted: "
                        f"{', '.join(sorted(declared)) or '(none: no cell tagged parameters)'}")
    return {n: _convert_parameter(label, n, v, declared[n]) for n, v in params.items()}


# ============================================================================================
# environment record
def _versions() -> dict:
    import hrnas

    out = {"python": platform.python_version(), "hrnas": getattr(hrnas, "__version__", None)}
    for dist in ("torch", "torchvision", "numpy", "papermill", "nbclient", "ipykernel"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _git_info(folder: Path) -> dict:
    """Commit and dirty flag of the repository holding `folder` (read-only git calls)."""
    def git(*args):
        try:
            r = subprocess.run(["git", "--no-optional-locks", "-C", str(folder), *args],
                               capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": (bool(status) if status is not None else None)}


# ============================================================================================
# running
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
    if any("injected-parameters" in _cell_tags(c) for c in src_cells):
        return exe_idx
    inj = [i for i, c in enumerate(exe_cells) if "injected-parameters" in _cell_tags(c)]
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


def _execute(info: NotebookInfo, params: dict, out: Path, kernel_name: str, timeout, progress: bool):
    """Run one notebook; return (status, error, output path)."""
    import papermill as pm

    final = out / f"{info.name}.ipynb"
    running = out / f"{info.name}.running.ipynb"
    error = None
    exe_idx = None
    try:
        pm.execute_notebook(str(info.path), str(running), parameters=params, kernel_name=kernel_name,
                            progress_bar=progress, cwd=str(info.path.parent),
                            execution_timeout=timeout, log_output=False)
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
    src_cells = _load_nb_json(info.path)["cells"]
    exe_cells = []
    if final.exists():
        try:
            exe_cells = [c for c in _load_nb_json(final)["cells"] if _PM_ERROR_TAG not in _cell_tags(c)]
        except UserError:
            exe_cells = []
        if exe_idx is None:
            exe_idx = _failed_cell_from_output(exe_cells)
            if exe_idx is not None:
                error["exec_count"] = exe_cells[exe_idx].get("execution_count")
    error["executed_cell_index"] = exe_idx
    error["cell_index"] = _source_cell_index(src_cells, exe_cells, exe_idx) if exe_idx is not None else None
    if error["cell_index"] is not None and 0 <= error["cell_index"] < len(src_cells):
        lines = _cell_source(src_cells[error["cell_index"]]).strip().splitlines()
        error["cell_source_head"] = lines[0][:120] if lines else ""
    return "failed", error, final if final.exists() else None


@contextlib.contextmanager
def _kernel_threads(threads: int | None):
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


def _print(progress: bool, *args):
    if progress:
        print(*args, file=sys.stderr, flush=True)


def summary_frame(results: list[Result]):
    import pandas as pd

    rows = []
    for r in results:
        rows.append({
            "notebook": r.name,
            "status": r.status,
            "seconds": round(r.seconds, 1),
            "key metrics": ", ".join(f"{k}={_fmt_metric(v)}" for k, v in r.key_metrics.items()),
            "error": r.error_text(),
        })
    return pd.DataFrame(rows, columns=["notebook", "status", "seconds", "key metrics", "error"])


def _write_summary(out: Path, results: list[Result], meta: dict, final: bool) -> str:
    table = markdown_table(summary_frame(results), index=False)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped")}
    head = (f"# hrnas reproduce: preset {meta['preset']}, {meta['started']}"
            + ("" if final else " (in progress)") + "\n\n"
            f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped; "
            f"executed notebooks and run.json files are in {out}\n\n")
    atomic_write_text(out / "summary.md", head + table)
    _write_json(out / "summary.json", {**meta, "finished": _now() if final else None, "complete": final,
                                       "counts": counts, "ok": final and counts["ok"] == len(results),
                                       "results": [_jsonable(r.to_dict(), "result") for r in results]})
    return table


def _plan(only, notebooks_dir, with_deps: bool) -> list[NotebookInfo]:
    infos = discover_notebooks(notebooks_dir)
    if not infos:
        raise UserError(f"notebooks_dir: no notebooks named NN_name.ipynb in {_resolve_notebooks_dir(notebooks_dir)}")
    order = _toposort(infos)
    if only is None:
        return order
    if isinstance(only, (str, os.PathLike)):
        only = [only]
    only = list(only)
    if not only:
        raise UserError("--only: give at least one notebook name")
    names = [i.name for i in infos]
    selected = {match_notebook(str(q), names) for q in only}
    if with_deps:
        by_name = {i.name: i for i in infos}
        stack = list(selected)
        while stack:
            for d in by_name[stack.pop()].depends:
                if d not in selected:
                    selected.add(d)
                    stack.append(d)
    return [i for i in order if i.name in selected]


def _effective_parameters(plan, declared, preset, out, figures_dir, params) -> dict[str, dict]:
    """Per notebook: injected values for the names it declares, then the user's params (strictly checked)."""
    names = [i.name for i in plan]
    union = sorted(set().union(*(declared[n] for n in names)))
    for p in params:
        if not isinstance(p, str):
            raise UserError(f"params: parameter names must be strings, got {_short(p)}")
        if not any(p in declared[n] for n in names):
            if len(names) == 1:
                raise UserError(f"{names[0]}: unknown parameter '{p}'; accepted: {', '.join(union) or '(none)'}")
            raise UserError(f"unknown parameter '{p}': none of the selected notebooks declares it; "
                            f"accepted: {', '.join(union) or '(none)'}")
    injected = {"preset": preset, "out_dir": str(out), "figures_dir": str(figures_dir), "progress": False}
    effective = {}
    for n in names:
        values = {k: v for k, v in injected.items() if k in declared[n]}
        values.update({k: v for k, v in params.items() if k in declared[n]})
        effective[n] = _check_against(n, declared[n], values)
    return effective


def reproduce(only=None, preset: str = "tiny", out="runs", params: Mapping | None = None,
              notebooks_dir="notebooks", figures_dir="figures", progress: bool = True, *,
              with_deps: bool = False, timeout: float | None = None,
              kernel_name: str = DEFAULT_KERNEL, jobs: int = 1) -> list[Result]:
    """Execute the notebooks with papermill into `out`; return one `Result` per notebook.

    `only`: names (with or without number prefix / .ipynb, or the number); default all, in
    dependency order. `with_deps`: also run the notebooks the selected ones depend on.
    `params`: {name: value}; a name applies to every selected notebook that declares it, a name
    declared by none is a UserError; values are converted with the notebook's annotations.
    All parameters of all selected notebooks are checked before anything runs.
    `timeout`: per-cell limit in seconds. A failing notebook is recorded (cell index in the source
    notebook, error name and value) and the others still run; a notebook whose dependency failed
    in this batch is skipped. `progress`: one line per notebook on stderr + the summary table on
    stdout. `jobs`: notebooks run at the same time (independent ones; each kernel then gets
    cores // jobs threads, unless OMP_NUM_THREADS is set): on a 2-core machine 2 one-thread kernels
    get through the batch about twice as fast as one two-thread kernel.
    """
    if preset not in PRESETS:
        raise UserError(f"preset: unknown preset {_short(preset)}; accepted: {', '.join(PRESETS)}")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
        raise UserError(f"timeout: must be a positive number of seconds, got {_short(timeout)}")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise UserError(f"jobs: must be an integer >= 1, got {_short(jobs)}")
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    if not isinstance(kernel_name, str) or not kernel_name:
        raise UserError(f"kernel_name: {_short(kernel_name)} is not a kernel name")
    params = dict(params or {})
    out = Path(out).resolve()
    figures_dir = Path(figures_dir).resolve()
    for label, folder in (("out", out), ("figures_dir", figures_dir)):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{label}: {folder} exists and is not a directory")

    plan = _plan(only, notebooks_dir, with_deps)
    declared = {i.name: inspect_parameters(i.path) for i in plan}
    effective = _effective_parameters(plan, declared, preset, out, figures_dir, params)

    out.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    versions = _versions()
    git = _git_info(plan[0].path.parent)
    meta = {"preset": preset, "out": str(out), "notebooks_dir": str(plan[0].path.parent),
            "order": [i.name for i in plan], "params": _jsonable(params, "params"), "jobs": jobs,
            "started": _now(), "versions": versions, "git": git}
    results: dict[str, Result] = {}
    status_of: dict[str, str] = {}
    position = {info.name: k for k, info in enumerate(plan, 1)}

    def start(info: NotebookInfo):
        """Checks and launch of one notebook; returns the state `finish` needs."""
        nb_params = effective[info.name]
        mdir = Path(nb_params.get("out_dir", out))
        warnings = []
        failed_deps = [d for d in info.depends if status_of.get(d) in ("failed", "skipped")]
        for d in info.depends:
            if d not in status_of:
                prev = out / f"{d}.run.json"
                try:
                    ok_before = json.loads(prev.read_text(encoding="utf-8")).get("status") == "ok"
                except (OSError, ValueError):
                    ok_before = False
                if not ok_before:
                    warnings.append(f"dependency {d} is not in this batch and has no successful run in {out}")
        for w in warnings:
            _print(progress, f"warning: {info.name}: {w}")
        _print(progress, f"[{position[info.name]}/{len(plan)}] {info.name} ...")
        state = {"info": info, "params": nb_params, "mdir": mdir, "warnings": warnings,
                 "started": _now(), "t0": time.perf_counter(), "future": None, "failed_deps": failed_deps}
        if not failed_deps:
            mfile = metrics_path(mdir, info.name)
            if mfile.exists():
                mfile.unlink()  # never report a previous run's metrics
            state["future"] = pool.submit(_execute, info, nb_params, out, kernel_name, timeout,
                                          progress and jobs == 1)
        return state

    def finish(state) -> None:
        info, warnings, metrics_record = state["info"], state["warnings"], {}
        if state["future"] is None:
            status, error, output = "skipped", {
                "cell_index": None, "exec_count": None, "ename": "DependencyFailed",
                "evalue": f"depends on {', '.join(state['failed_deps'])}, which did not succeed"}, None
        else:
            status, error, output = state["future"].result()
            try:
                metrics_record = read_metrics(state["mdir"], info.name)
            except UserError as exc:
                warnings.append(str(exc))
        seconds = time.perf_counter() - state["t0"]
        metrics = metrics_record.get("metrics", {})
        result = Result(
            name=info.name, status=status, seconds=seconds, input=info.path, output=output,
            run_json=out / f"{info.name}.run.json", parameters=state["params"], metrics=metrics,
            key_metrics=_key_metrics(metrics, metrics_record.get("key", [])), error=error,
            started=state["started"], finished=_now())
        _write_json(result.run_json, _jsonable({
            "notebook": info.name, "status": status, "input": str(info.path),
            "output": str(output) if output else None, "parameters": state["params"],
            "preset": preset, "depends": list(info.depends), "kernel": kernel_name,
            "python_executable": sys.executable, "platform": platform.platform(),
            "versions": versions, "git": git, "start": state["started"], "end": result.finished,
            "seconds": round(seconds, 3), "metrics": metrics, "key_metrics": list(result.key_metrics),
            "error": error, "warnings": warnings, "jobs": jobs, "kernel_threads": threads,
        }, "run.json"))
        results[info.name] = result
        status_of[info.name] = status
        line = f"[{position[info.name]}/{len(plan)}] {info.name}: {status} in {seconds:.1f} s"
        _print(progress, line + (f" - {result.error_text()}" if error else ""))
        _write_summary(out, [r for i in plan if (r := results.get(i.name))], meta, final=False)

    # A notebook starts once every dependency of this batch has finished (the first ready one in plan
    # order); with jobs > 1 each kernel gets cores // jobs threads (OMP/MKL_NUM_THREADS, read by torch).
    in_batch = {info.name for info in plan}
    waiting, running = list(plan), []
    with _kernel_threads(threads), concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        while waiting or running:
            for info in list(waiting):
                if len(running) >= jobs:
                    break
                if all(d in status_of for d in info.depends if d in in_batch):
                    waiting.remove(info)
                    state = start(info)
                    if state["future"] is None:
                        finish(state)
                    else:
                        running.append(state)
            if not running:  # the plan is in topological order: something is always ready
                if waiting:
                    raise RuntimeError(f"reproduce: no notebook of {[i.name for i in waiting]} can start")
                continue
            concurrent.futures.wait([s["future"] for s in running], return_when=concurrent.futures.FIRST_COMPLETED)
            for state in [s for s in running if s["future"].done()]:
                running.remove(state)
                finish(state)
    results = [results[info.name] for info in plan]
    table = _write_summary(out, results, meta, final=True)
    if progress:
        print(table, end="", flush=True)
        print(f"summary: {out / 'summary.md'}", flush=True)
    return results


# ============================================================================================
# CLI
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--only", nargs="+", action="extend", metavar="NAME",
                        help="run only these notebooks (name with or without number prefix / .ipynb, or the number)")
    parser.add_argument("--preset", choices=PRESETS, default="tiny",
                        help="injected as `preset` into notebooks that declare it (default: tiny)")
    parser.add_argument("--out", default="runs", metavar="DIR",
                        help="executed notebooks, run.json files and summary (default: runs)")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], dest="params",
                        metavar=("NAME", "VALUE"),
                        help="notebook parameter, converted with the notebook's annotation; applies to every "
                             "selected notebook that declares it")
    parser.add_argument("--list", action="store_true", help="list notebooks (run order) and parameters, run nothing")
    parser.add_argument("--with-deps", action="store_true", help="also run the dependencies of --only notebooks")
    parser.add_argument("--notebooks-dir", default="notebooks", metavar="DIR", help="default: notebooks")
    parser.add_argument("--figures-dir", default="figures", metavar="DIR", help="default: figures")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="per-cell time limit")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), metavar="N",
                        help="notebooks run at the same time, each kernel with cores/N threads (default: 2 "
                             "on a machine with 2 or more cores)")
    parser.add_argument("--kernel", default=DEFAULT_KERNEL, help=f"Jupyter kernel (default: {DEFAULT_KERNEL})")
    parser.add_argument("--quiet", action="store_true", help="no progress lines and no summary on the terminal")
    return parser


def _params_from_pairs(pairs) -> dict:
    params = {}
    for name, value in pairs or []:
        if name in params:
            raise UserError(f"-p {name}: given twice ({_short(params[name])} and {_short(value)})")
        params[name] = value
    return params


def list_notebooks(only=None, notebooks_dir="notebooks", with_deps: bool = False) -> str:
    lines = []
    for info in _plan(only, notebooks_dir, with_deps):
        lines.append(info.name + (f"  (depends: {', '.join(info.depends)})" if info.depends else ""))
        for name, p in inspect_parameters(info.path).items():
            lines.append(f"    {name}: {p['type']} = {p['default']!r}" + (f"  # {p['help']}" if p["help"] else ""))
    return "\n".join(lines) + "\n"


def run_from_args(args: argparse.Namespace) -> int:
    """Run a parsed `hrnas reproduce` command line; 0 = all notebooks ok, 1 = some failed.
    Bad input raises UserError (the caller prints it and exits with 2)."""
    params = _params_from_pairs(args.params)
    if args.list:
        if params:
            raise UserError("--list: -p has no effect with --list")
        print(list_notebooks(args.only, args.notebooks_dir, args.with_deps), end="")
        return 0
    results = reproduce(only=args.only, preset=args.preset, out=args.out, params=params,
                        notebooks_dir=args.notebooks_dir, figures_dir=args.figures_dir,
                        progress=not args.quiet, with_deps=args.with_deps, timeout=args.timeout,
                        kernel_name=args.kernel, jobs=args.jobs)
    return 0 if all(r.ok for r in results) else 1


def main(argv=None) -> int:
    """`hrnas reproduce …` as a function: returns 0 (all ok), 1 (a notebook failed), 2 (bad input)."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="hrnas reproduce", description="Re-run the notebooks with papermill and summarise the results."))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return run_from_args(args)
    except UserError as exc:
        print(f"hrnas reproduce: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
