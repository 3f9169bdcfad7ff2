"""The options of `hrnas reproduce` (added to the ``hrnas`` parser by `hrnas.cli`) and their run."""
from __future__ import annotations

import argparse
import os

from hrnas.errors import UserError
from hrnas.reproduce.batch import DEFAULT_KERNEL, PRESETS, reproduce
from hrnas.reproduce.metrics import short
from hrnas.reproduce.notebooks import plan
from hrnas.reproduce.parameters import inspect_parameters, papermill_unseen


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
            raise UserError(f"-p {name}: given twice ({short(params[name])} and {short(value)})")
        params[name] = value
    return params


def list_notebooks(only=None, notebooks_dir="notebooks", with_deps: bool = False) -> str:
    """The run order, each notebook with its parameters (type, default, help)."""
    lines = []
    for info in plan(only, notebooks_dir, with_deps):
        lines.append(info.name + (f"  (depends: {', '.join(info.depends)})" if info.depends else ""))
        unseen = set(papermill_unseen(info.path))
        for name, p in inspect_parameters(info.path).items():
            lines.append(f"    {name}: {p['type']} = {p['default']!r}" + (f"  # {p['help']}" if p["help"] else "")
                         + ("  [not seen by papermill's inspect_notebook]" if name in unseen else ""))
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
