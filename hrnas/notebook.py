"""What the task notebooks call, so that each keeps only its own story (its data, metric and figures).

A task notebook (01-05) runs the same sequence on its dataset; `TaskRun` is that sequence:

    run = TaskRun.open("02_cityscapes_segmentation", "cityscapes", preset=..., out_dir=..., figures_dir=...)
    run.search()            # a fresh search in <out_dir>/<name>/search (or a finished identical one, `reuse`)
    run.retrain()           # optional: the searched architecture from scratch, in <out_dir>/<name>/retrain
    run.evaluate(names)     # `hrnas eval` of the final run: our metrics (`run.ours`), the evaluated network
                            # (`run.evaluated`) and, at tiny, the range several seeds gave
    run.cost_table()        # params / MACs of super network and searched network, both conventions
    run.results_table()     # ours next to the published numbers, saved as CSV / Markdown / LaTeX
    run.record(key)         # the numbers `hrnas reproduce` collects

The samplers of :mod:`hrnas.samples` (re-exported here) turn a dataset or an evaluated run into what the
figures of `hrnas.viz` draw.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path


from hrnas.errors import UserError
from hrnas.experiment import (LoadedRun, data_label, evaluate_checkpoint, export_arch, load_run, resolve_data_root,
                              run_experiment)
from hrnas.io import atomic_write_json
from hrnas.samples import (class_iou, class_names, classification_samples, classify, kitti_detections, kitti_frame,
                           pose_predictions, pose_samples, segmentation_predictions, segmentation_samples)

SEARCH_POINTER = "search_run.json"  # in <out_dir>/<notebook>/: the search run the notebook used (its own or reused)
RESULT_COLUMNS = ["method", "metric", "value", "input_size", "params_M", "macs_G", "split", "confidence",
                  "source", "note"]


def read_jsonl(path) -> list[dict]:
    """The rows of a JSON-lines log (``steps.jsonl``, ``metrics.jsonl``); [] when the file is missing."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path} line {n}: not JSON ({err})") from None
    return rows


def search_of(out_dir, notebook: str, task: str, *, fallback_dir, preset: str = "tiny", seed: int = 1995,
              progress: bool = True) -> LoadedRun:
    """The search run that task notebook ``notebook`` used in ``out_dir`` (its own, or the identical earlier run
    it reused, as its ``search_run.json`` names it), opened without its network; when that notebook has not run,
    a short search of ``task`` of our own in ``fallback_dir`` (removed first)."""
    pointer = Path(out_dir) / notebook / SEARCH_POINTER
    run_dir = Path(json.loads(pointer.read_text())["run_dir"]) if pointer.is_file() else None
    if run_dir is None or not (run_dir / "arch.json").is_file():
        run_dir = Path(fallback_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        run_experiment(task, "search", out=run_dir, preset=preset, overrides=[f"train.seed={seed}"], progress=progress)
    return load_run(run_dir, network=False)


@dataclass
class TaskRun:
    """One task notebook's search, optional retraining and evaluation (see the module docstring)."""

    name: str
    task: str
    preset: str
    out_dir: Path
    figures_dir: Path
    data_root: Path
    marker: dict | None
    settings: list[str]
    progress: bool = True
    search_result: dict | None = None
    search_dir: Path | None = None
    final_dir: Path | None = None
    arch_file: Path | None = None
    retrained: bool = False
    evaluation: dict | None = None
    evaluated: object | None = None  # hrnas.experiment.LoadedRun: the network as evaluated
    ours: dict | None = None  # our metrics under their published names
    _hrnas_cost: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, name: str, task: str, *, preset: str, out_dir, figures_dir, data_root=None, seed: int = 1995,
             overrides=(), progress: bool = True) -> "TaskRun":
        """Resolve the dataset (``data_root``, else the embedded synthetic one) and the run's settings
        (``train.seed=<seed>`` followed by ``overrides``)."""
        from hrnas.data.synthetic import read_marker

        root = resolve_data_root(task, preset, data_root)
        return cls(name=name, task=task, preset=preset, out_dir=Path(out_dir), figures_dir=Path(figures_dir),
                   data_root=root, marker=read_marker(root), settings=[f"train.seed={seed}", *overrides],
                   progress=progress)

    # ---- provenance --------------------------------------------------------------------------
    @property
    def synthetic(self) -> bool:
        return self.marker is not None

    @property
    def label(self) -> str:
        return data_label(self.synthetic, self.preset)

    @property
    def run_root(self) -> Path:
        return self.out_dir / self.name

    def figure(self, what: str) -> Path:
        """``<figures_dir>/<name>_<what>_<preset>.png``."""
        return self.figures_dir / f"{self.name}_{what}_{self.preset}.png"

    def describe_data(self) -> str:
        text = f"{self.task} data: {self.data_root}\n{self.label}"
        return text + (f"; generator {self.marker}" if self.synthetic else "")

    def config(self) -> dict:
        from hrnas.engine.config import load_config

        return load_config(self.task, self.preset, self.settings)

    def val_dataset(self):
        """The validation split as the run's recipe reads it (the evaluation's transform, no augmentation)."""
        from hrnas.tasks import get_task

        return get_task(self.config()).val_dataset(self.data_root)

    # ---- search, retraining, evaluation --------------------------------------------------------
    def search(self, reuse=()) -> dict:
        """A fresh search in ``<out_dir>/<name>/search`` (removed first), unless a run in ``reuse`` finished
        the very same search; the architecture it selected is exported to ``<out_dir>/<name>/arch.json``."""
        search_dir = self.run_root / "search"
        shutil.rmtree(search_dir, ignore_errors=True)  # a notebook run starts a fresh search
        result = run_experiment(self.task, "search", out=search_dir, data_root=self.data_root, preset=self.preset,
                                overrides=self.settings, progress=self.progress, reuse=list(reuse))
        self.search_result = result
        self.search_dir = self.final_dir = Path(result["run_dir"])
        self.arch_file = export_arch(self.search_dir, self.run_root / "arch.json")
        atomic_write_json(self.run_root / SEARCH_POINTER, {"run_dir": str(self.search_dir.resolve()),
                                                           "reused": bool(result.get("reused"))})
        return result

    def _require(self, attr: str, step: str):
        value = getattr(self, attr)
        if value is None:
            raise UserError(f"{self.name}: call {step} first")
        return value

    def describe_search(self) -> str:
        r = self._require("search_result", "search()")
        reused = " (reused: the same recipe, data and seed had already run there)" if r.get("reused") else ""
        wall = r.get("wall_time_s")
        return f"search run: {self.search_dir}{reused}\n{r['steps']} steps" + (f" in {wall:.0f} s" if wall is not None else "")

    def steps(self) -> list[dict]:
        """Rows of the search's ``steps.jsonl`` (every ``train.log_interval`` steps)."""
        return read_jsonl(self._require("search_dir", "search()") / "steps.jsonl")

    def history(self) -> list[dict]:
        """Rows of the search's ``metrics.jsonl`` (per epoch and per evaluation)."""
        return read_jsonl(self._require("search_dir", "search()") / "metrics.jsonl")

    def plot_search(self):
        """Task loss, L1 penalty, MACs and the validation metric of the search, saved as ``search_curves``;
        the title says how many steps it took and whether an identical earlier run was reused."""
        from hrnas.viz.plots import search_curves

        r = self._require("search_result", "search()")
        wall = r.get("wall_time_s")
        took = f"{r['steps']} steps" + (f", {wall:.0f} s" if wall is not None else "") + \
            (", reused" if r.get("reused") else "")
        return search_curves(self.steps(), self.history(), path=self.figure("search_curves"),
                             title=f"HR-NAS search, {self.task} ({self.label}; {took})")

    def retrain(self) -> dict:
        """Train the searched architecture from scratch in ``<out_dir>/<name>/retrain``; it becomes the final run."""
        arch_file = self._require("arch_file", "search()")
        final = self.run_root / "retrain"
        shutil.rmtree(final, ignore_errors=True)
        result = run_experiment(self.task, "train", out=final, data_root=self.data_root, preset=self.preset,
                                overrides=self.settings, arch=arch_file, progress=self.progress)
        self.final_dir, self.retrained = final, True
        return result

    def evaluate(self, names: dict, scale: float = 1.0, key: str | None = None, unit: str = ""):
        """``hrnas eval`` of the final run (its latest checkpoint on the val split).

        Keeps our metrics under their published names as ``self.ours`` (``{published: scale * evaluation[ours]}``
        for those the evaluation has), the whole evaluation as ``self.evaluation``, the evaluated network (BN
        re-calibrated, eval mode) as ``self.evaluated`` for the prediction figures; its outputs (result files)
        are in ``self.eval_dir``. Prints which network was evaluated and, for the ``key`` metric, the line of
        :func:`hrnas.expected.describe_expected` (the range several seeds gave at preset tiny, or that there
        is no such table). Returns ``self.ours`` as a labelled table (a pandas Series, rounded to 2 decimals).
        """
        import pandas as pd

        from hrnas.expected import describe_expected

        final = self._require("final_dir", "search()")
        if key is not None and key not in names.values():
            raise UserError(f"key: {key!r} is not among our metrics ({', '.join(names.values())})")
        self.evaluation, self.evaluated = evaluate_checkpoint(self.task, final, data_root=self.data_root,
                                                              return_model=True)
        self.ours = {published: scale * self.evaluation[k] for k, published in names.items() if k in self.evaluation}
        print(self.describe_evaluation())
        if key is not None:
            if key not in self.ours:
                raise UserError(f"key: the evaluation has no value for {key!r} ({', '.join(self.evaluation)})")
            print(describe_expected(self.task, key, self.ours[key], self.preset, unit=unit))
        return pd.Series(self.ours, name=f"ours ({self.label})").round(2)

    @property
    def eval_dir(self) -> Path:
        """Where the evaluation wrote its outputs (KITTI result files, COCO keypoint results)."""
        return Path(self._require("evaluation", "evaluate()")["checkpoint"]).parent / "eval"

    def describe_evaluation(self) -> str:
        ev = self._require("evaluation", "evaluate()")
        network = "the retrained network" if self.retrained else "the searched network (no retraining)"
        return f"evaluated {network}: {ev['checkpoint']} (step {ev['step']})"

    # ---- architecture and cost ---------------------------------------------------------------
    def architecture(self) -> tuple[dict, dict]:
        """(searched architecture spec, super network spec)."""
        from hrnas.models import build_model, load_arch, spec_of

        searched = load_arch(self._require("arch_file", "search()"))
        return searched, spec_of(build_model(self.task, **searched["model"]))

    def show_architecture(self, rows: int = 10):
        """Print the summary, draw the searched architecture over the super network (``searched_architecture``)
        and return the first ``rows`` rows of the per-block table."""
        from hrnas.viz import arch_summary, arch_table, draw_architecture

        searched, supernet = self.architecture()
        print(arch_summary(searched, supernet=supernet))
        draw_architecture(searched, path=self.figure("searched_architecture"),
                          title=f"Searched architecture, {self.task} ({self.label})", supernet=supernet)
        return arch_table(searched, supernet=supernet).head(rows)

    def hrnas_cost(self) -> dict:
        """Profiles (``hrnas`` convention, the paper's "FLOPs") of the super and searched networks at the
        paper's input size of the task."""
        if not self._hrnas_cost:
            from hrnas.models import PAPER_SIZES, build_model
            from hrnas.profile import profile

            searched, _ = self.architecture()
            size = PAPER_SIZES[self.task]
            self._hrnas_cost = {"super network": profile(build_model(self.task, **searched["model"]), size,
                                                         convention="hrnas"),
                                "searched": profile(build_model(arch=searched), size, convention="hrnas")}
        return self._hrnas_cost

    def cost_table(self):
        """Params (M) and MACs (G) of the super network and the searched one at the paper's input size:
        ``true`` (every multiply-add, counted by the run) and ``hrnas`` (the authors' profiler)."""
        import pandas as pd

        from hrnas.models import PAPER_SIZES

        run_cost = self._require("search_result", "search()")["profile"]
        hr = self.hrnas_cost()
        size = PAPER_SIZES[self.task]
        print(f"at {size[0]}x{size[1]}; network searched on {self.label}")
        return pd.DataFrame({
            "params (M), true": [run_cost["supernet_params"] / 1e6, run_cost["params"] / 1e6],
            "MACs (G), true": [run_cost["supernet_macs"] / 1e9, run_cost["macs"] / 1e9],
            "params (M), hrnas": [p.params / 1e6 for p in hr.values()],
            "MACs (G), hrnas": [p.macs / 1e9 for p in hr.values()],
        }, index=list(hr)).round(3)

    # ---- results ------------------------------------------------------------------------------
    def results_table(self, float_format: str = ".2f"):
        """Our metrics (``self.ours``) next to the published rows of the same metrics (``reference_results``),
        saved as ``<name>_results_<preset>.csv/.md/.tex``; returned without the source and note columns."""
        import pandas as pd

        from hrnas.models import PAPER_SIZES
        from hrnas.viz.tables import reference_results, save_table

        ours = self._require("ours", "evaluate()")
        size = PAPER_SIZES[self.task]
        searched = self.hrnas_cost()["searched"]
        ours_rows = pd.DataFrame({
            "method": f"HR-NAS, ours ({self.label}{', retrained' if self.retrained else ''})", "metric": list(ours),
            "value": list(ours.values()), "input_size": f"{size[0]}x{size[1]} (cost)",
            "params_M": searched.params / 1e6, "macs_G": searched.macs / 1e9, "split": "val",
            "confidence": "computed in this notebook", "source": self.name,
            "note": "MACs in the paper's (hrnas) convention"})
        published = reference_results(self.task)
        table = pd.concat([ours_rows, published[published["metric"].isin(list(ours))]], ignore_index=True)
        table = table[RESULT_COLUMNS]
        save_table(table, f"{self.name}_results_{self.preset}", self.figures_dir, float_format=float_format,
                   caption=f"{self.task}: ours ({self.label}) next to published results (not ours; see confidence "
                           f"and source)")
        return table.drop(columns=["source", "note"])

    def metrics(self, extra: dict | None = None) -> dict:
        """The record of a task notebook: provenance, our metrics, ``extra``, searched cost, search effort."""
        ours = self._require("ours", "evaluate()")
        searched = self.hrnas_cost()["searched"]
        search = self._require("search_result", "search()")
        return {"preset": self.preset, "synthetic": self.synthetic, "retrained": self.retrained, **ours,
                **(extra or {}), "searched_params_M": searched.params / 1e6, "searched_MACs_G": searched.macs / 1e9,
                "search_steps": search["steps"], "search_wall_time_s": search["wall_time_s"]}

    def record(self, key, extra: dict | None = None) -> Path:
        """``record_metrics`` of :meth:`metrics` into ``<out_dir>/<name>.metrics.json``; ``key``: the metrics
        of the batch summary."""
        from hrnas.reproduce import record_metrics

        return record_metrics(self.out_dir, self.name, self.metrics(extra), key=key)


__all__ = ["TaskRun", "read_jsonl", "data_label", "class_iou", "segmentation_samples", "segmentation_predictions", "pose_samples",
           "pose_predictions", "kitti_frame", "kitti_detections", "class_names", "classification_samples",
           "classify"]
