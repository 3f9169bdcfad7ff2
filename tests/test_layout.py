"""The package's layout rules (docs/design.md): the import graph between hrnas' parts has no cycle and
engine/ imports neither search/ nor tasks/; no module is longer than ~450 lines."""
import ast
from pathlib import Path

import hrnas

ROOT = Path(hrnas.__file__).resolve().parent


def _part(module: str) -> str:
    return ".".join(module.split(".")[:2])


def import_graph() -> dict[str, set[str]]:
    """hrnas part (``hrnas.engine``, ``hrnas.profile``, ...) -> the parts it imports, anywhere in its files."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        src = _part(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                dst = _part(name)
                if name.startswith("hrnas.") and dst != src:
                    graph.setdefault(src, set()).add(dst)
    return graph


def test_engine_does_not_import_search_or_tasks():
    graph = import_graph()
    assert "hrnas.models" in graph["hrnas.engine"]  # the graph is read (the engine builds optimizers for models)
    assert not graph["hrnas.engine"] & {"hrnas.search", "hrnas.tasks", "hrnas.experiment", "hrnas.notebook"}


def test_no_import_cycle_between_parts():
    graph = import_graph()

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in reachable(b)})
    assert cycles == []


def test_no_module_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert long == {}


def test_every_referenced_document_is_in_the_repository():
    """Every ``docs/NAME.md`` and every Markdown link ``](NAME.md)`` in the package, the docs, the benchmarks and
    the README exists here (outputs such as ``summary.md`` are named without ``docs/``, not linked)."""
    import re

    repo = ROOT.parent
    files = [*ROOT.rglob("*.py"), *(repo / "docs").glob("*.md"), repo / "README.md", *(repo / "benchmarks").glob("*.py")]
    missing = set()
    for f in files:
        text = f.read_text()
        refs = re.findall(r"(?<![\w/.-])(docs/[\w.-]+\.md)", text) + re.findall(r"\]\(([\w./-]+\.md)[#)]", text)
        for ref in refs:
            if not (f.parent / ref).exists() and not (repo / ref).exists():
                missing.add((str(f.relative_to(repo)), ref))
    assert len(files) > 100 and sorted(missing) == []
