"""Notebook discovery (``NN_name.ipynb``), dependencies (``metadata.hrnas.depends``) and run order."""
from __future__ import annotations

import dataclasses
import heapq
import json
import os
import re
from pathlib import Path

from hrnas.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
_NB_RE = re.compile(r"^(?P<num>\d+)_(?P<rest>[^/\\]+)$")


@dataclasses.dataclass(frozen=True)
class NotebookInfo:
    name: str            # file stem, e.g. "02_cityscapes_segmentation"
    number: int
    path: Path
    depends: tuple[str, ...] = ()


def load_nb_json(path: Path) -> dict:
    """The notebook as plain JSON; a UserError naming the file when it is missing or not a notebook."""
    try:
        nb = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such notebook") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable notebook ({type(exc).__name__})") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise UserError(f"{path}: not a notebook (no 'cells' list)")
    return nb


def cell_source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def cell_tags(cell) -> list:
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


def resolve_notebooks_dir(notebooks_dir) -> Path:
    p = Path(notebooks_dir)
    if p.is_dir():
        return p.resolve()
    if str(notebooks_dir) == "notebooks" and DEFAULT_NOTEBOOKS_DIR.is_dir():
        return DEFAULT_NOTEBOOKS_DIR  # run from outside the repository: use the package's notebooks/
    raise UserError(f"notebooks_dir: no such directory: {p}")


def discover_notebooks(notebooks_dir="notebooks") -> list[NotebookInfo]:
    """All `NN_name.ipynb` in `notebooks_dir`, sorted by (number, name), dependencies resolved."""
    folder = resolve_notebooks_dir(notebooks_dir)
    found = sorted((int(m["num"]), path.stem, path) for path in folder.glob("*.ipynb")
                   if (m := _NB_RE.match(path.stem)) and path.is_file())
    names = [stem for _, stem, _ in found]
    infos = []
    for number, stem, path in found:
        meta = load_nb_json(path).get("metadata", {}).get("hrnas", {}) or {}
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


def toposort(infos: list[NotebookInfo]) -> list[NotebookInfo]:
    """Dependencies first; among the notebooks ready at the same time, the lowest number first."""
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
    return [i.name for i in toposort(discover_notebooks(notebooks_dir))]


def plan(only, notebooks_dir, with_deps: bool) -> list[NotebookInfo]:
    """The notebooks to run, in run order: all, or those of `only` (+ their dependencies)."""
    infos = discover_notebooks(notebooks_dir)
    if not infos:
        raise UserError(f"notebooks_dir: no notebooks named NN_name.ipynb in {resolve_notebooks_dir(notebooks_dir)}")
    order = toposort(infos)
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
