"""`reproduce`: a batch of notebooks run with papermill, dependencies first, up to `jobs` at a time,
and its summary (``summary.md`` / ``summary.json``, rewritten after every notebook)."""
from __future__ import annotations

import concurrent.futures
import json
import os
import platform
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from hrnas.errors import UserError
from hrnas import MINIATURE_PRESETS
from hrnas.io import atomic_write_text
from hrnas.provenance import git_info, versions
from hrnas.reproduce.execute import Result, execute, kernel_threads
from hrnas.reproduce.metrics import fmt_metric, jsonable, key_metrics, metrics_path, now, read_metrics, short, write_json
from hrnas.reproduce.notebooks import NotebookInfo, plan as make_plan
from hrnas.reproduce.parameters import check_against, inspect_parameters, papermill_parameters
from hrnas.viz.tables import markdown_table

PRESETS = (*MINIATURE_PRESETS, "paper")  # tiny first: the default batch
INJECTED_PARAMETERS = ("preset", "out_dir", "figures_dir", "progress")
DEFAULT_KERNEL = "python3"


def _effective_parameters(plan, declared, preset, out, figures_dir, params) -> dict[str, dict]:
    """Per notebook: injected values for the names it declares, then the user's params (strictly checked)."""
    names = [i.name for i in plan]
    union = sorted(set().union(*(declared[n] for n in names)))
    for p in params:
        if not isinstance(p, str):
            raise UserError(f"params: parameter names must be strings, got {short(p)}")
        if not any(p in declared[n] for n in names):
            if len(names) == 1:
                raise UserError(f"{names[0]}: unknown parameter '{p}'; accepted: {', '.join(union) or '(none)'}")
            raise UserError(f"unknown parameter '{p}': none of the selected notebooks declares it; "
                            f"accepted: {', '.join(union) or '(none)'}")
    injected = dict(zip(INJECTED_PARAMETERS, (preset, str(out), str(figures_dir), False)))
    effective = {}
    for n in names:
        values = {k: v for k, v in injected.items() if k in declared[n]}
        values.update({k: v for k, v in params.items() if k in declared[n]})
        effective[n] = check_against(n, declared[n], values)
    return effective


def _print(progress: bool, *args):
    if progress:
        print(*args, file=sys.stderr, flush=True)


def summary_frame(results: list[Result]):
    import pandas as pd

    rows = [{"notebook": r.name, "status": r.status, "seconds": round(r.seconds, 1),
             "key metrics": ", ".join(f"{k}={fmt_metric(v)}" for k, v in r.key_metrics.items()),
             "error": r.error_text()} for r in results]
    return pd.DataFrame(rows, columns=["notebook", "status", "seconds", "key metrics", "error"])


def _write_summary(out: Path, results: list[Result], meta: dict, final: bool) -> str:
    table = markdown_table(summary_frame(results), index=False)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "skipped")}
    head = (f"# hrnas reproduce: preset {meta['preset']}, {meta['started']}"
            + ("" if final else " (in progress)") + "\n\n"
            f"{counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} skipped; "
            f"executed notebooks and run.json files are in {out}\n\n")
    atomic_write_text(out / "summary.md", head + table)
    write_json(out / "summary.json", {**meta, "finished": now() if final else None, "complete": final,
                                      "counts": counts, "ok": final and counts["ok"] == len(results),
                                      "results": [jsonable(r.to_dict(), "result") for r in results]})
    return table


def _check_arguments(preset, timeout, jobs, kernel_name) -> None:
    if preset not in PRESETS:
        raise UserError(f"preset: unknown preset {short(preset)}; accepted: {', '.join(PRESETS)}")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0):
        raise UserError(f"timeout: must be a positive number of seconds, got {short(timeout)}")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise UserError(f"jobs: must be an integer >= 1, got {short(jobs)}")
    if not isinstance(kernel_name, str) or not kernel_name:
        raise UserError(f"kernel_name: {short(kernel_name)} is not a kernel name")


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
    _check_arguments(preset, timeout, jobs, kernel_name)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    params = dict(params or {})
    out = Path(out).resolve()
    figures_dir = Path(figures_dir).resolve()
    for label, folder in (("out", out), ("figures_dir", figures_dir)):
        if folder.exists() and not folder.is_dir():
            raise UserError(f"{label}: {folder} exists and is not a directory")

    plan = make_plan(only, notebooks_dir, with_deps)
    declared = {i.name: inspect_parameters(i.path) for i in plan}
    effective = _effective_parameters(plan, declared, preset, out, figures_dir, params)
    unseen = {i.name: [n for n in effective[i.name] if n not in papermill_parameters(i.path)] for i in plan}

    out.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    env_versions = versions("papermill", "nbclient", "ipykernel")
    git = git_info(plan[0].path.parent)
    meta = {"preset": preset, "out": str(out), "notebooks_dir": str(plan[0].path.parent),
            "order": [i.name for i in plan], "params": jsonable(params, "params"), "jobs": jobs,
            "started": now(), "versions": env_versions, "git": git}
    results: dict[str, Result] = {}
    status_of: dict[str, str] = {}
    position = {info.name: k for k, info in enumerate(plan, 1)}

    def start(info: NotebookInfo):
        """Checks and launch of one notebook; returns the state `finish` needs."""
        nb_params = effective[info.name]
        mdir = Path(nb_params.get("out_dir", out))
        warnings = [f"parameter '{n}' is not listed by papermill's inspect_notebook (its annotation or line "
                    f"breaks the notebook contract); plain papermill would call it unknown" for n in unseen[info.name]]
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
                 "started": now(), "t0": time.perf_counter(), "future": None, "failed_deps": failed_deps}
        if not failed_deps:
            mfile = metrics_path(mdir, info.name)
            if mfile.exists():
                mfile.unlink()  # never report a previous run's metrics
            state["future"] = pool.submit(execute, info, nb_params, out, kernel_name, timeout,
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
            key_metrics=key_metrics(metrics, metrics_record.get("key", [])), error=error,
            started=state["started"], finished=now())
        write_json(result.run_json, jsonable({
            "notebook": info.name, "status": status, "input": str(info.path),
            "output": str(output) if output else None, "parameters": state["params"],
            "preset": preset, "depends": list(info.depends), "kernel": kernel_name,
            "python_executable": sys.executable, "platform": platform.platform(),
            "versions": env_versions, "git": git, "start": state["started"], "end": result.finished,
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
    with kernel_threads(threads), concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
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
